// What other processes and the file system can see of memfork's layers:
// nothing. Layers are anonymous memory files (no name in any file system),
// closed on exec (MFD_CLOEXEC), and sealed against growing and shrinking.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Segment, backend, memoryStats } from '../src/index.ts';
import { runtimeName } from '../src/runtime.ts';
import * as sys from '../platform/libc.ts';
import { fdTargets, layerFds, linuxOnly } from './helpers/proc.ts';

const skip = linuxOnly || (backend.name !== 'linux' && `the ${backend.name} backend is loaded, not linux`);

const O_CLOEXEC_OCTAL = 0o2000000;
const F_SEAL_EXEC = 0x20;

/** Segments spread over several layers: fresh ones, clones, written clones. */
function makeSegments(): Segment[] {
  const page = backend.pageSize;
  const a = Segment.create(8 * page);
  new Uint8Array(a.buffer).fill(1);
  const b = a.clone();
  new Uint8Array(a.buffer)[3 * page] = 2;
  const c = a.clone();
  new Uint8Array(c.buffer)[5 * page] = 3;
  const d = c.clone();
  const fresh = Segment.create(4 * page);
  new Uint8Array(fresh.buffer)[0] = 4;
  return [a, b, c, d, fresh];
}

function closeAll(segs: Segment[]): void {
  for (const s of segs) s.close();
}

test('a child process inherits no layer descriptor (MFD_CLOEXEC)', { skip }, (t) => {
  const segs = makeSegments();
  try {
    assert.ok(layerFds().length > 0, 'this process holds layer descriptors');
    const ls = spawnSync('ls', ['-l', '/proc/self/fd/'], { encoding: 'utf8' });
    assert.equal(ls.status, 0, ls.stderr);
    const seen = ls.stdout
      .trim()
      .split('\n')
      .filter((l) => l.includes('->'))
      .map((l) => l.slice(l.lastIndexOf(' ', l.indexOf(' ->') - 1) + 1));
    t.diagnostic(`the child's descriptors: ${seen.join(', ')}`);
    assert.doesNotMatch(ls.stdout, /memfd:memfork/, 'ls sees no memfork memory file');
    assert.doesNotMatch(ls.stdout, /pagemap/, 'nor the page-table reader');
    // Past stdio: Bun and Deno give a child /dev/null as its stdin.
    const inherited = seen.filter((d) => Number.parseInt(d, 10) > 2);
    assert.ok(!inherited.some((d) => d.endsWith('/dev/null')), `nor the spare descriptor memfork keeps: ${inherited.join(', ')}`);

    if (runtimeName === 'node') {
      const script =
        "const fs = require('fs');" +
        "const out = fs.readdirSync('/proc/self/fd').map((n) => { try { return fs.readlinkSync('/proc/self/fd/' + n); } catch { return ''; } });" +
        'process.stdout.write(JSON.stringify(out));';
      const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      assert.equal(child.status, 0, child.stderr);
      const targets = JSON.parse(child.stdout) as string[];
      assert.deepEqual(
        targets.filter((x) => x.includes('memfd:memfork')),
        [],
        'a Node.js child sees no memfork memory file',
      );
    }
  } finally {
    closeAll(segs);
  }
});

test('every layer descriptor is close-on-exec and names no file: memfd:memfork (deleted)', { skip }, () => {
  const segs = makeSegments();
  try {
    const layers = fdTargets().filter((f) => f.target.includes('memfork'));
    assert.equal(layers.length, memoryStats().layers, 'one descriptor per layer');
    for (const { fd, target } of layers) {
      assert.equal(target, '/memfd:memfork (deleted)', `fd ${fd} links to a memory file with no name`);
      const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      assert.ok(flags !== null, `fdinfo of ${fd}`);
      assert.ok((Number.parseInt(flags[1]!, 8) & O_CLOEXEC_OCTAL) !== 0, `fd ${fd} is O_CLOEXEC`);
    }
  } finally {
    closeAll(segs);
  }
  assert.deepEqual(layerFds(), [], 'closing every segment closes every layer descriptor');
});

test('every layer is sealed against growing and shrinking', { skip }, (t) => {
  const segs = makeSegments();
  try {
    const fds = layerFds();
    assert.ok(fds.length > 0);
    for (const fd of fds) {
      const seals = sys.getSeals(fd);
      assert.equal(seals & sys.F_SEAL_GROW, sys.F_SEAL_GROW, `fd ${fd} has F_SEAL_GROW (seals 0x${seals.toString(16)})`);
      assert.equal(seals & sys.F_SEAL_SHRINK, sys.F_SEAL_SHRINK, `fd ${fd} has F_SEAL_SHRINK (seals 0x${seals.toString(16)})`);
      t.diagnostic(`fd ${fd}: seals 0x${seals.toString(16)}${(seals & F_SEAL_EXEC) !== 0 ? ' (F_SEAL_EXEC from MFD_NOEXEC_SEAL)' : ''}`);
      // The seals hold: the kernel refuses to resize the file.
      assert.throws(() => sys.ftruncate(fd, 0), { code: 'EPERM', syscall: 'ftruncate' }, 'shrinking is refused');
      assert.throws(() => sys.ftruncate(fd, 1 << 30), { code: 'EPERM', syscall: 'ftruncate' }, 'growing is refused');
    }
  } finally {
    closeAll(segs);
  }
});
