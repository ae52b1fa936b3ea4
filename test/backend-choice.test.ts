// Which backend memfork picks: from the platform (faked here), overridden by
// MEMFORK_BACKEND, and falling back to the copy backend when the chosen one
// cannot load or fails its self-test (failures injected into each backend).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { chooseBackend, readOverride } from '../src/backend.ts';
import { loadBackend } from '../src/load.ts';
import { runtimeName } from '../src/runtime.ts';
import type { Backend, BackendName } from '../src/backend.ts';
import { SegmentError } from '../src/errors.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { CopyBackend } from '../platform/copy.ts';
import { DarwinBackend } from '../platform/darwin.ts';
import { KERN_INVALID_ARGUMENT } from '../platform/mach.ts';
import { MachSim, simulatedDarwin } from './mach-sim.ts';

// The project root (test files run from it where __dirname does not exist).
const root = typeof __dirname === 'string' ? join(__dirname, '..') : process.cwd();

/** Runs `fn` with console.warn captured; returns its result and the warnings. */
function withWarnings<T>(fn: () => T): { result: T; warnings: string[] } {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => {
    warnings.push(args.map(String).join(' '));
  };
  try {
    return { result: fn(), warnings };
  } finally {
    console.warn = original;
  }
}

describe('chooseBackend()', () => {
  it('picks linux on Linux, darwin on macOS, and copy on every other platform', () => {
    assert.deepEqual(chooseBackend('linux', undefined), { name: 'linux' });
    assert.deepEqual(chooseBackend('darwin', undefined), { name: 'darwin' });
    for (const platform of ['win32', 'freebsd', 'openbsd', 'sunos', 'aix', 'android', 'unknown']) {
      assert.deepEqual(chooseBackend(platform, undefined), { name: 'copy' }, platform);
    }
  });

  it('treats an empty MEMFORK_BACKEND as unset', () => {
    assert.deepEqual(chooseBackend('linux', ''), { name: 'linux' });
    assert.deepEqual(chooseBackend('win32', ''), { name: 'copy' });
  });

  it('follows MEMFORK_BACKEND when it names a backend, whatever the platform', () => {
    for (const platform of ['linux', 'darwin', 'win32', 'freebsd']) {
      for (const name of ['linux', 'darwin', 'copy'] as const) {
        assert.deepEqual(chooseBackend(platform, name), { name }, `${platform} with ${name}`);
      }
    }
  });

  it('reads MEMFORK_BACKEND without regard to case or surrounding spaces', () => {
    assert.deepEqual(chooseBackend('linux', 'COPY'), { name: 'copy' });
    assert.deepEqual(chooseBackend('linux', ' Copy\n'), { name: 'copy' });
    assert.deepEqual(chooseBackend('win32', 'Darwin'), { name: 'darwin' });
  });

  it('keeps the platform backend and explains in one line when MEMFORK_BACKEND names none', () => {
    for (const [platform, native] of [['linux', 'linux'], ['darwin', 'darwin'], ['win32', 'copy'], ['freebsd', 'copy']] as const) {
      const choice = chooseBackend(platform, 'fast');
      assert.equal(choice.name, native, platform);
      assert.equal(choice.warning, `MEMFORK_BACKEND=fast is not one of linux, darwin, copy: using ${native}`);
    }
    const odd = chooseBackend('linux', 'copy-on-write');
    assert.equal(odd.name, 'linux');
    assert.match(odd.warning!, /^MEMFORK_BACKEND=copy-on-write is not one of/);
    assert.ok(!odd.warning!.includes('\n'));
  });
});

describe('readOverride()', () => {
  it('returns what the environment holds, set or not', () => {
    assert.deepEqual(readOverride(() => 'copy'), { value: 'copy' });
    assert.deepEqual(readOverride(() => undefined), { value: undefined });
  });

  it('says in one line why MEMFORK_BACKEND cannot be read where reading it throws, as Deno without --allow-env does', () => {
    const refused = readOverride(() => {
      const err = new Error('Requires env access to "MEMFORK_BACKEND",\nrun again with the --allow-env flag');
      err.name = 'NotCapable';
      throw err;
    });
    assert.deepEqual(refused, {
      value: undefined,
      unreadable: 'NotCapable: Requires env access to "MEMFORK_BACKEND", run again with the --allow-env flag',
    });
    assert.equal(readOverride(() => { throw 'no'; }).unreadable, 'no');
  });
});

describe('loadBackend()', () => {
  it('loads the copy backend without a word', () => {
    const { result, warnings } = withWarnings(() => loadBackend('copy'));
    assert.equal(result.name, 'copy');
    assert.deepEqual(warnings, []);
  });

  it('loads the Linux backend on Linux', { skip: process.platform !== 'linux' && 'Linux only' }, () => {
    const { result, warnings } = withWarnings(() => loadBackend('linux'));
    assert.equal(result.name, 'linux');
    assert.deepEqual(warnings, []);
  });

  it('falls back to copy with a one-line warning when the backend cannot load here', () => {
    const foreign = process.platform === 'darwin' ? 'linux' : 'darwin';
    const { result, warnings } = withWarnings(() => loadBackend(foreign));
    assert.equal(result.name, 'copy');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, new RegExp(`^memfork: the ${foreign} backend cannot load \\(.+\\); using the copy backend$`));
    assert.ok(!warnings[0]!.includes('\n'), warnings[0]);
  });

  it('gives a copy backend that works after a fallback', () => {
    const { result } = withWarnings(() => loadBackend(process.platform === 'darwin' ? 'linux' : 'darwin'));
    const b = result as Backend<unknown>;
    const h = b.create(b.pageSize);
    try {
      new Uint8Array(b.view(h, 0, b.pageSize))[0] = 5;
      const c = b.clone(h);
      assert.equal(new Uint8Array(b.view(c, 0, 1))[0], 5);
      b.release(c);
    } finally {
      b.release(h);
    }
  });
});

describe('the backend a new process picks', { skip: runtimeName !== 'node' && 'spawns Node.js' }, () => {
  /** Loads src/index.ts in a child process with `env`; returns its backend and stderr. */
  function load(env: Record<string, string | undefined>, before = ''): { backend: { name: string; pageSize: number }; stderr: string } {
    const script = `${before}const m = require('./src/index.ts'); process.stdout.write(JSON.stringify(m.backend));`;
    const args = [...process.execArgv.filter((a) => !a.startsWith('--test')), '-e', script];
    const childEnv: Record<string, string> = {};
    for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) childEnv[k] = v;
    const r = spawnSync(process.execPath, args, { cwd: root, env: childEnv, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    // Only memfork's own lines: a runtime may add warnings of its own (module type, …).
    const stderr = r.stderr
      .split('\n')
      .filter((line) => line.startsWith('memfork:'))
      .map((line) => `${line}\n`)
      .join('');
    return { backend: JSON.parse(r.stdout) as { name: string; pageSize: number }, stderr };
  }

  it('is the platform backend, with a one-line warning, when MEMFORK_BACKEND cannot be read', () => {
    // As Deno without --allow-env: reading the variable throws NotCapable.
    const refuse =
      "const env = process.env; Object.defineProperty(process, 'env', { value: new Proxy(env, { get(t, k) { " +
      "if (k === 'MEMFORK_BACKEND') { const e = new Error('Requires env access to \"MEMFORK_BACKEND\"'); e.name = 'NotCapable'; throw e; } " +
      'return Reflect.get(t, k); } }) });';
    const { backend, stderr } = load({ MEMFORK_BACKEND: 'copy' }, refuse);
    const native = process.platform === 'linux' ? 'linux' : process.platform === 'darwin' ? 'darwin' : 'copy';
    assert.equal(backend.name, native);
    assert.equal(stderr, `memfork: MEMFORK_BACKEND cannot be read (NotCapable: Requires env access to "MEMFORK_BACKEND"): using ${native}\n`);
  });

  it('is copy with MEMFORK_BACKEND=copy', () => {
    const { backend, stderr } = load({ MEMFORK_BACKEND: 'copy' });
    assert.equal(backend.name, 'copy');
    assert.equal(stderr, '');
  });

  it('is the platform backend, with a warning, when MEMFORK_BACKEND is not understood', { skip: process.platform !== 'linux' && 'Linux only' }, () => {
    const { backend, stderr } = load({ MEMFORK_BACKEND: 'quick' });
    assert.equal(backend.name, 'linux');
    assert.equal(stderr, 'memfork: MEMFORK_BACKEND=quick is not one of linux, darwin, copy: using linux\n');
  });

  it('is copy, with one warning line, when MEMFORK_BACKEND names a backend this system lacks', { skip: process.platform !== 'linux' && 'Linux only' }, () => {
    const { backend, stderr } = load({ MEMFORK_BACKEND: 'darwin' });
    assert.equal(backend.name, 'copy');
    assert.match(stderr, /^memfork: the darwin backend cannot load \(.+\); using the copy backend\n$/);
  });
});

describe('the self-test loadBackend() runs on every backend', () => {
  /** The backend `name` as this machine makes it (the macOS one over the Mach simulation off macOS). */
  function real(name: BackendName): Backend {
    if (name === 'linux') return new LinuxBackend();
    if (name === 'darwin') return process.platform === 'darwin' ? new DarwinBackend() : simulatedDarwin.make();
    return new CopyBackend();
  }
  const names: BackendName[] = (['linux', 'darwin', 'copy'] as const).filter(
    (n) => n === 'copy' || (n === 'linux' ? process.platform === 'linux' : process.platform === 'darwin' || process.platform === 'linux'),
  );

  for (const name of names) {
    it(`passes on the ${name} backend, which then loads without a word`, () => {
      const made: Backend[] = [];
      const { result, warnings } = withWarnings(() => loadBackend(name, (n) => { const b = real(n); made.push(b); return b; }));
      assert.equal(result.name, name);
      assert.equal(result, made[0]);
      assert.deepEqual(warnings, []);
      assert.equal(result.memory().mappings, 0, 'the self-test closed what it made');
    });

    it(`falls back to copy, naming the failure in one line, when the ${name} backend's clone is refused`, () => {
      const { result, warnings } = withWarnings(() =>
        loadBackend(name, (n) => {
          const b = real(n);
          if (n === name) {
            b.clone = () => {
              throw new SegmentError('mmap EPERM: cannot map 8192 bytes', 'EPERM', 1, 'mmap');
            };
          }
          return b;
        }),
      );
      assert.equal(result.name, 'copy');
      assert.equal(warnings.length, 1);
      const expected =
        name === 'copy'
          ? 'memfork: the copy backend failed its self-test (clone: mmap EPERM: cannot map 8192 bytes)'
          : `memfork: the ${name} backend failed its self-test (clone: mmap EPERM: cannot map 8192 bytes); using the copy backend`;
      assert.equal(warnings[0], expected);
    });

    it(`falls back when the ${name} backend's clone shares its origin's bytes instead of copying them`, () => {
      const { result, warnings } = withWarnings(() =>
        loadBackend(name, (n) => {
          const b = real(n) as Backend<unknown>;
          if (n === name) b.clone = (source: unknown) => source;
          return b;
        }),
      );
      assert.equal(result.name, 'copy');
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, new RegExp(`^memfork: the ${name} backend failed its self-test \\(a write to a clone or its origin shows in the other\\)`));
    });

    it(`keeps the ${name} backend when the self-test only runs out of memory`, () => {
      const { result, warnings } = withWarnings(() =>
        loadBackend(name, (n) => {
          const b = real(n);
          b.clone = () => {
            throw new SegmentError('mmap ENOMEM: cannot map 8192 bytes', 'ENOMEM', 12, 'mmap');
          };
          return b;
        }),
      );
      assert.equal(result.name, name);
      assert.deepEqual(warnings, []);
    });
  }

  it('falls back when the macOS backend passes a tag to mach_vm_remap and the kernel refuses it', { skip: process.platform !== 'linux' && 'the Mach simulation runs on Linux' }, () => {
    const { result, warnings } = withWarnings(() =>
      loadBackend('darwin', (n) => {
        if (n !== 'darwin') return new CopyBackend();
        const sim = new MachSim();
        sim.fail('mach_vm_remap', KERN_INVALID_ARGUMENT);
        return new DarwinBackend(sim);
      }),
    );
    assert.equal(result.name, 'copy');
    assert.equal(
      warnings[0],
      'memfork: the darwin backend failed its self-test (clone: mach_vm_remap KERN_INVALID_ARGUMENT: cannot clone 32768 bytes ((os/kern) invalid argument)); using the copy backend',
    );
  });
});
