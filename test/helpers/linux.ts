// A Linux backend of a test's own: made with the options a test needs
// (budgets, a path forced), used for the test, then the default one again.
import { LinuxBackend } from '../../platform/linux/index.ts';
import { clearFaults } from '../../platform/libc.ts';
import { setBackend } from '../../src/segment.ts';

/** Runs `fn` with a Linux backend made with `options`, then clears injected faults and puts a default one back. */
export function withLinux<T>(options: ConstructorParameters<typeof LinuxBackend>[0], fn: (b: LinuxBackend) => T): T {
  const b = new LinuxBackend(options);
  setBackend(b);
  try {
    return fn(b);
  } finally {
    clearFaults();
    setBackend(new LinuxBackend());
  }
}
