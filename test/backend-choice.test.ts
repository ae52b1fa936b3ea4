// Which backend memfork picks: from the platform (faked here), overridden by
// MEMFORK_BACKEND, and falling back to the copy backend when the chosen one
// cannot load.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { chooseBackend } from '../src/backend.ts';
import { loadBackend } from '../src/load.ts';
import { runtimeName } from '../src/runtime.ts';
import type { Backend } from '../src/backend.ts';

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
  function load(env: Record<string, string | undefined>): { backend: { name: string; pageSize: number }; stderr: string } {
    const script = "const m = require('./src/index.ts'); process.stdout.write(JSON.stringify(m.backend));";
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
