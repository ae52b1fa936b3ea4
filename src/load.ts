// Loads the chosen backend. A backend opens its system libraries only here,
// so Linux never loads libSystem and macOS never loads libc.so.6.
import type { Backend, BackendName } from './backend.ts';
import { canDetach } from './runtime.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { CopyBackend } from '../platform/copy.ts';
import { DarwinBackend } from '../platform/darwin.ts';

/**
 * The backend called `name`, or the portable `copy` backend (with a one-line
 * warning) when that one cannot load here: an unsupported system, or a
 * runtime that refuses ArrayBuffers over outside memory (Electron does).
 */
export function loadBackend(name: BackendName): Backend {
  if (name === 'copy') return new CopyBackend();
  try {
    if (!canDetach()) throw new Error('this runtime cannot detach ArrayBuffers');
    const b: Backend = name === 'linux' ? new LinuxBackend() : new DarwinBackend();
    // Refused external ArrayBuffers show up on the first view.
    const probe = b.create(b.pageSize);
    try {
      b.view(probe, 0, 1);
    } finally {
      b.release(probe);
    }
    return b;
  } catch (err) {
    // One line, whatever the system's message looks like.
    const reason = String((err as Error)?.message ?? err).replace(/\s+/g, ' ').trim();
    console.warn(`memfork: the ${name} backend cannot load (${reason}); using the copy backend`);
    return new CopyBackend();
  }
}
