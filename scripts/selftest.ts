// `npm run selftest`: what a report about memfork on this machine needs, in
// one run. Versions and page sizes, the load-time self-test of the platform's
// own backend, the behaviour suites' result, and the kernel's figures for a
// cloned segment (on macOS, mach_vm_region for each map entry; elsewhere the
// backend's stats). Paste the whole output into the report.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { Segment, backend, memoryStats } from '../src/index.ts';
import { setBackend } from '../src/segment.ts';
import { chooseBackend } from '../src/backend.ts';
import { selfTest } from '../src/load.ts';
import type { Backend } from '../src/backend.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { DarwinBackend } from '../platform/darwin.ts';

const root = join(__dirname, '..');
const version = (file: string): string => (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
const line = (label: string, value: unknown): void => console.log(`${label.padEnd(22)} ${String(value)}`);

console.log('== memfork selftest');
line('memfork', version(join(root, 'package.json')));
line('koffi', version(join(root, 'node_modules', 'koffi', 'package.json')));
line('runtime', `Node.js ${process.version}`);
line('system', `${os.type()} ${os.release()} (${os.version()}) ${process.arch}`);
if (process.platform === 'darwin') {
  const sw = spawnSync('sw_vers', [], { encoding: 'utf8' });
  if (sw.status === 0) line('macOS', sw.stdout.replace(/\s+/g, ' ').trim());
  const rosetta = spawnSync('sysctl', ['-n', 'sysctl.proc_translated'], { encoding: 'utf8' });
  line('under Rosetta', rosetta.stdout.trim() === '1' ? 'yes' : 'no');
}
line('backend loaded', `${backend.name} (page ${backend.pageSize} bytes, views up to ${backend.maxViewLength} bytes)`);

// The platform's own backend, made afresh: the one loaded may be a fallback.
const native = chooseBackend(process.platform, undefined).name;
let platformBackend: Backend | undefined;
try {
  platformBackend = native === 'linux' ? new LinuxBackend() : native === 'darwin' ? new DarwinBackend() : undefined;
} catch (err) {
  line(`${native} backend`, `cannot load: ${(err as Error).message}`);
}
if (platformBackend instanceof DarwinBackend) {
  line('vm_page_size', platformBackend.pageSize);
  line('vm_kernel_page_size', platformBackend.kernelPageSize);
} else if (platformBackend !== undefined) {
  line('page size', platformBackend.pageSize);
}
if (platformBackend !== undefined) {
  const t0 = performance.now();
  const failed = selfTest(platformBackend);
  const ms = (performance.now() - t0).toFixed(2);
  line('self-test', failed === undefined ? `passed (${ms} ms)` : `FAILED: ${failed.failure}${failed.shortage ? ' (a resource ran short)' : ''}`);
}

console.log('\n== figures for a cloned segment');
if (platformBackend !== undefined) setBackend(platformBackend);
try {
  const page = platformBackend?.pageSize ?? backend.pageSize;
  using a = Segment.create(4 * page);
  new Uint8Array(a.buffer).fill(1, 0, 2 * page); // origin: 2 pages written
  using b = a.clone();
  new Uint8Array(b.buffer)[0] = 2; // clone: 1 page written
  new Uint8Array(a.buffer)[page] = 3; // origin: 1 page written after the clone
  line('origin stats()', JSON.stringify(a.stats()));
  line('clone stats()', JSON.stringify(b.stats()));
  line('memory', JSON.stringify(platformBackend !== undefined ? platformBackend.memory() : memoryStats()));
  if (platformBackend instanceof DarwinBackend) {
    const handle = (s: Segment) => ({ addr: s.address, length: 4 * page, released: false });
    for (const [name, seg] of [['origin', a], ['clone', b]] as const) {
      for (const r of platformBackend.regions(handle(seg))) {
        line(`${name} mach_vm_region`, JSON.stringify(r, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
      }
    }
    line('task_info', JSON.stringify(platformBackend.taskVmInfo()));
  }
} catch (err) {
  line('FAILED', (err as Error).stack ?? String(err));
}

console.log('\n== behaviour suites');
const suites = ['test/segment.test.ts', 'test/model.test.ts', 'test/darwin.test.ts', 'test/backend-choice.test.ts'];
const run = spawnSync(process.execPath, ['-r', 'ts-node/register', '--test', '--test-reporter=tap', ...suites], {
  cwd: root,
  encoding: 'utf8',
  maxBuffer: 1 << 28,
});
const out = `${run.stdout}\n${run.stderr}`;
for (const l of out.split('\n')) {
  if (/^\s*not ok /.test(l) || /^# (tests|pass|fail|skipped|cancelled) /.test(l)) console.log(l);
}
line('suites', run.status === 0 ? 'passed' : `FAILED (exit ${run.status ?? run.signal})`);
line('koffi.errno works', typeof koffi.errno === 'function' ? 'yes' : 'no');
