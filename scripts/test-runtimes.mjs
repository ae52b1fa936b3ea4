#!/usr/bin/env node
// Runs the test suites (test/*.test.ts) on every JavaScript runtime memfork
// supports: the Node.js running it (the machine's, for `npm test`), Node.js
// 22, the newest Node.js, Bun and Deno, two files at a time. The other
// runtimes are npm packages, pinned in scripts/runtimes/package-lock.json.
// They are not dependencies of the project (`npm install` stays small): the
// first run that needs them installs them into scripts/runtimes/node_modules
// with `npm ci --prefix scripts/runtimes`, and later runs find them there
// until the lockfile changes. Only this platform's binaries install.
//
//   node scripts/test-runtimes.mjs                  every runtime, every suite (npm test)
//   node scripts/test-runtimes.mjs --no-host        every runtime but the Node.js running it
//   node scripts/test-runtimes.mjs bun deno         some runtimes
//   node scripts/test-runtimes.mjs test/x.test.ts   some suites
//   node scripts/test-runtimes.mjs --verbose        stream each runtime's output (one file at a time)
//   node scripts/test-runtimes.mjs --times          show each file's counts and time
//   node scripts/test-runtimes.mjs --jobs=1         one file at a time (default: 2 on 2+ cores)
//   node scripts/test-runtimes.mjs --list           show the runtimes found (installs nothing)
//   node scripts/test-runtimes.mjs --install        install the runtimes if needed, run nothing
//
// Each file runs in a process of its own; its output is shown when it fails
// (always with --verbose). The summary lists, per runtime, every skipped test
// with its reason where the runtime prints one; the last line is the total
// over all runtimes: `runtimes: N passed, N failed, N skipped`. The exit code
// is 1 when a file failed, a runtime could not run it, or the runtimes could
// not be installed.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const runtimesDir = join(root, 'scripts', 'runtimes');
const platform = process.platform;
const arch = process.arch;

/** Where the runtimes install: `npm ci --prefix scripts/runtimes`. */
const runtimesModules = join(runtimesDir, 'node_modules');
/** Written after a successful install: the hash of the lockfile it installed. */
const stampFile = join(runtimesModules, '.memfork-runtimes-lock');

function lockHash() {
  return createHash('sha256').update(readFileSync(join(runtimesDir, 'package-lock.json'))).digest('hex');
}

/**
 * Installs the locked runtimes unless the installed set is already the one
 * scripts/runtimes/package-lock.json pins. `npm ci` downloads each package
 * once into npm's cache; a later install (after a lockfile change, or in a
 * fresh clone on the same machine) takes them from there. Returns false when
 * npm failed.
 */
function ensureRuntimes() {
  const want = lockHash();
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === want) return true;
  console.log('Installing the test runtimes (Node.js 22 and 26, Bun, Deno) into scripts/runtimes/node_modules: npm ci --prefix scripts/runtimes');
  const started = Date.now();
  // The npm running `npm test` when there is one, else the one on PATH.
  const npmCli = process.env.npm_execpath;
  const [cmd, pre] =
    npmCli !== undefined && /npm-cli\.c?js$/.test(npmCli) ? [process.execPath, [npmCli]] : [platform === 'win32' ? 'npm.cmd' : 'npm', []];
  // npm hands its own prefix to the scripts it runs; this install has its own.
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (/^npm_config_(local_)?prefix$/i.test(key)) delete env[key];
  }
  const res = spawnSync(cmd, [...pre, 'ci', '--prefix', runtimesDir, '--no-audit', '--no-fund'], {
    cwd: runtimesDir,
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
    shell: platform === 'win32',
  });
  if (res.status !== 0) {
    const why = res.error ? res.error.message : res.signal ? `ended by ${res.signal}` : `exit code ${res.status}`;
    console.error(`Could not install the test runtimes (${why}); run \`npm ci --prefix scripts/runtimes\` to see why.`);
    return false;
  }
  writeFileSync(stampFile, `${want}\n`);
  console.log(`Installed the test runtimes in ${((Date.now() - started) / 1000).toFixed(1)} s.`);
  return true;
}

/** Where npm put a package of the runtimes package, if it is installed. */
function packageDir(name) {
  const dir = join(runtimesModules, name);
  return existsSync(join(dir, 'package.json')) ? dir : undefined;
}

function versionOf(dir) {
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
}

/**
 * Node.js versions come from the `nodeNN-<platform>-<arch>` aliases in
 * scripts/runtimes/package.json, so adding a version there adds it here.
 */
function nodeRuntimes() {
  const manifest = JSON.parse(readFileSync(join(runtimesDir, 'package.json'), 'utf8'));
  const majors = new Set();
  for (const name of Object.keys(manifest.optionalDependencies ?? {})) {
    const m = /^node(\d+)-/.exec(name);
    if (m) majors.add(Number(m[1]));
  }
  return [...majors].sort((a, b) => a - b).map((major) => {
    const dir = packageDir(`node${major}-${platform}-${arch}`);
    const bin = dir && join(dir, 'bin', 'node');
    return nodeRuntime(major, bin && existsSync(bin) ? bin : undefined, dir && `Node.js ${versionOf(dir)}`);
  });
}

/** A Node.js of major version `major`, at `bin`. */
function nodeRuntime(major, bin, version) {
  return {
    name: `node${major}`,
    bin,
    version,
    // Node.js 24+ strips types itself and runs `using`. Node.js 22 strips
    // types too, but its V8 lacks `using` declarations: ts-node compiles there.
    args: (files) => (major >= 24 ? ['--test', ...files] : ['-r', 'ts-node/register', '--test', ...files]),
    loader: major >= 24 ? 'built-in type stripping' : 'ts-node (CommonJS)',
    // The project's package.json has no "type"; Node.js then says on every
    // file that it reparses it as an ES module. Child processes inherit this.
    env:
      major >= 24
        ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --disable-warning=MODULE_TYPELESS_PACKAGE_JSON`.trim() }
        : {},
  };
}

/**
 * The Node.js running this script: the machine's, which `npm test` runs
 * on. It runs every suite, the host-only ones too, and takes the place of
 * an installed Node.js of the same major version.
 */
function hostRuntime() {
  const major = Number(process.versions.node.split('.')[0]);
  return { ...nodeRuntime(major, process.execPath, `Node.js ${process.versions.node} (this one)`), host: true };
}

function bunRuntime() {
  const cpu = arch === 'x64' ? 'x64' : arch === 'arm64' ? 'aarch64' : arch;
  const dir = packageDir(`@oven/bun-${platform}-${cpu}`);
  const bin = dir && join(dir, 'bin', 'bun');
  return {
    name: 'bun',
    bin: bin && existsSync(bin) ? bin : undefined,
    version: dir && `Bun ${versionOf(dir)}`,
    // `bun test` runs node:test suites; paths need a ./ to be taken as paths.
    // Bun gives each test 5 s unless told; node:test and Deno give no limit.
    args: (files) => ['test', '--timeout=600000', ...files.map((f) => `./${f}`)],
    loader: 'built-in',
  };
}

/**
 * Deno permissions for the suites: all of them. The library itself needs
 * only --allow-ffi and --allow-env=MEMFORK_BACKEND, but the suites' /proc
 * helpers read /proc/self/maps through node:fs, which Deno grants only with
 * --allow-all (see docs/runtimes.md).
 */
const denoTestPermissions = ['--allow-all'];

function denoRuntime() {
  const target = platform === 'linux' ? `linux-${arch}-glibc` : `${platform}-${arch}`;
  const dir = packageDir(`@deno/${target}`);
  const bin = dir && join(dir, platform === 'win32' ? 'deno.exe' : 'deno');
  return {
    name: 'deno',
    bin: bin && existsSync(bin) ? bin : undefined,
    version: dir && `Deno ${versionOf(dir)}`,
    // Type checking is `npm run typecheck`'s job; Deno only runs the code here.
    // node_modules is found through package.json (Deno's "manual" mode).
    args: (files) => ['test', '--no-check', '--no-lock', ...denoTestPermissions, ...files],
    loader: 'built-in',
    env: { NO_COLOR: '1' },
  };
}

/**
 * Suites that check Node.js tooling rather than the runtime: they run once,
 * on the Node.js running this script, and are skipped on the others with
 * this reason (named on the command line, they run everywhere).
 * @type {Record<string, string>}
 */
const hostOnly = {
  'test/examples.test.ts': 'runs the examples as a user would, with Node.js and ts-node',
  'test/package.test.ts': 'builds and packs the package and installs it with npm',
};

/** Suites that measure memory of the whole system: they never share the machine with another file of this run. */
const measuresSystem = new Set(['test/memory.test.ts', 'test/gc.test.ts', 'test/leaks.test.ts']);

/**
 * Suites that cannot run on one runtime, with the reason printed when
 * skipped. Everything else runs everywhere.
 * @type {Record<string, Record<string, string>>}
 */
const fileSkips = {};

/** Reads the pass/fail/skip counts from the closing lines of each runner. */
function parseCounts(name, output) {
  // Colours, where FORCE_COLOR or a terminal asked for them.
  const out = output.replace(/\x1b\[[0-9;]*m/g, '');
  const counts = { passed: 0, failed: 0, skipped: 0, found: false, endedEarly: false };
  const take = (re, key) => {
    const all = [...out.matchAll(re)];
    if (all.length > 0) {
      counts[key] = Number(all[all.length - 1][1]);
      counts.found = true;
    }
  };
  if (name.startsWith('node')) {
    take(/^(?:#|ℹ) pass (\d+)$/gm, 'passed');
    take(/^(?:#|ℹ) fail (\d+)$/gm, 'failed');
    const skipped = [...out.matchAll(/^(?:#|ℹ) (?:skipped|todo) (\d+)$/gm)].slice(-2);
    counts.skipped = skipped.reduce((n, m) => n + Number(m[1]), 0);
    const cancelled = [...out.matchAll(/^(?:#|ℹ) cancelled (\d+)$/gm)].pop();
    if (cancelled) counts.failed += Number(cancelled[1]);
  } else if (name === 'bun') {
    take(/^\s*(\d+) pass$/gm, 'passed');
    take(/^\s*(\d+) fail$/gm, 'failed');
    take(/^\s*(\d+) skip$/gm, 'skipped');
  } else if (name === 'deno') {
    // node:test suites are Deno tests and their `it`s are steps: count both.
    const m = [
      ...out.matchAll(
        /^(?:ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \((\d+) steps?\))?(?: \| (\d+) ignored(?: \((\d+) steps?\))?)?/gm,
      ),
    ].pop();
    if (m) {
      const n = (i) => Number(m[i] ?? 0);
      counts.passed = n(1) + n(2);
      counts.failed = n(3) + n(4);
      counts.skipped = n(5) + n(6);
      counts.found = true;
    }
    // Deno reports a file whose code ended the process as passed, with the
    // tests after that point missing from its counts.
    counts.endedEarly = /called `Deno\.exit\(\d*\)` from outside any test/.test(out);
  }
  return counts;
}

/**
 * The tests a runner skipped (or marked todo), with the reason where the
 * runner prints one: Node.js in TAP (`ok 3 - name # SKIP reason`) or spec
 * (`﹣ name (1ms) # reason`) form; Bun (`(skip) suite > name`) and Deno
 * (`name ... ignored`) print the names only.
 * @returns {{ name: string, reason: string }[]}
 */
function parseSkips(name, output) {
  const out = output.replace(/\x1b\[[0-9;]*m/g, '');
  const skips = [];
  const add = (test, reason) => skips.push({ name: test.trim(), reason: reason?.trim() || `no reason printed by ${name}` });
  if (name.startsWith('node')) {
    for (const m of out.matchAll(/^\s*ok \d+ - (.*?) # (SKIP|TODO)(?: (.*))?$/gm)) add(m[1], m[2] === 'TODO' ? `todo: ${m[3] ?? ''}` : m[3]);
    for (const m of out.matchAll(/^\s*﹣ (.*?) \([\d.]+m?s\)(?: # (.*))?$/gm)) add(m[1], m[2]);
    for (const m of out.matchAll(/^\s*[✔✖] (.*?) \([\d.]+m?s\) # (.*)$/gm)) add(m[1], `todo: ${m[2]}`);
  } else if (name === 'bun') {
    for (const m of out.matchAll(/^\((skip|todo)\) (.*?)(?: \[[\d.]+m?s\])?$/gm)) add(m[2], m[1] === 'todo' ? 'todo (Bun prints no reason)' : 'Bun prints no reason');
  } else if (name === 'deno') {
    for (const m of out.matchAll(/^\s*(.*?) \.\.\. ignored \(/gm)) add(m[1], 'Deno prints no reason');
  }
  return skips;
}

/** Process groups of the runtimes now running, ended with this runner. */
const running = new Set();
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    for (const group of running) {
      try {
        process.kill(-group, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    process.exit(130);
  });
}

function run(runtime, files, verbose, timeoutMs) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(runtime.bin, runtime.args(files), {
      cwd: root,
      env: { ...process.env, ...runtime.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    running.add(child.pid);
    let out = '';
    let timedOut = false;
    const kill = () => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    };
    // A hung file is one that stops printing: every runtime reports each
    // test as it ends. A file that is only slow (a loaded machine, a runtime
    // slower than the others) keeps printing and runs on, up to a cap.
    let timer = setTimeout(kill, timeoutMs);
    const cap = setTimeout(kill, timeoutMs * 4);
    const onData = (stream) => (chunk) => {
      out += chunk;
      if (verbose) stream.write(chunk);
      clearTimeout(timer);
      timer = setTimeout(kill, timeoutMs);
    };
    child.stdout.on('data', onData(process.stdout));
    child.stderr.on('data', onData(process.stderr));
    child.on('error', (err) => {
      out += `\n${err.message}\n`;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(cap);
      running.delete(child.pid);
      resolve({ code, signal, out, timedOut, seconds: (Date.now() - started) / 1000 });
    });
  });
}

async function main() {
  const argv = process.argv.slice(2);
  const verbose = argv.includes('--verbose');
  const list = argv.includes('--list');
  const times = argv.includes('--times');
  const positional = argv.filter((a) => !a.startsWith('--'));
  const withHost = !argv.includes('--no-host');
  const known = () => {
    const host = withHost ? [hostRuntime()] : [];
    const others = [...nodeRuntimes(), bunRuntime(), denoRuntime()].filter((r) => !host.some((h) => h.name === r.name));
    return [...host, ...others];
  };
  let all = known();
  const wanted = positional.filter((a) => !a.endsWith('.ts'));
  const unknown = wanted.filter((w) => !all.some((r) => r.name === w));
  if (unknown.length > 0) {
    console.error(`Unknown runtime: ${unknown.join(', ')} (known: ${all.map((r) => r.name).join(', ')})`);
    process.exit(2);
  }
  if (!list) {
    const ready = ensureRuntimes();
    // Without the others, the Node.js running this still runs its suites; the run fails.
    if (!ready) process.exitCode = 1;
    if (argv.includes('--install') || (!ready && !withHost)) return;
    all = known();
  }
  const runtimes = wanted.length > 0 ? all.filter((r) => wanted.includes(r.name)) : all;

  if (list) {
    for (const r of all) {
      console.log(`${r.name.padEnd(7)} ${r.bin ? `${r.version}: ${r.host === true ? r.bin : relative(root, r.bin)} (TypeScript: ${r.loader})` : `not installed for ${platform}-${arch}${existsSync(stampFile) ? '' : ' (the runtimes are installed by the first run)'}`}`);
    }
    return;
  }

  let files = positional.filter((a) => a.endsWith('.ts'));
  // Host-only suites run on the Node.js running this, unless named.
  const named = files.length > 0;
  if (!named) {
    files = readdirSync(join(root, 'test'))
      .filter((f) => f.endsWith('.test.ts'))
      .sort()
      .map((f) => `test/${f}`);
    const elsewhere = runtimes.filter((r) => r.host !== true && r.bin).map((r) => r.name);
    const onHost = runtimes.some((r) => r.host === true);
    for (const f of files.filter((f) => hostOnly[f] !== undefined)) {
      if (elsewhere.length === 0) continue;
      const where = onHost ? `it runs on the Node.js running this, ${process.versions.node}` : 'npm test runs it on the Node.js running it';
      console.log(`skipping ${f} on ${elsewhere.join(', ')} (${where}): ${hostOnly[f]}`);
    }
  }
  const timeoutMs = Number(process.env.MEMFORK_RUNTIME_TIMEOUT ?? 300) * 1000;

  // Two files at a time on two cores: each runtime mostly keeps one core
  // busy, and the suites are written for a machine other processes share.
  const jobsArg = argv.find((a) => a.startsWith('--jobs='));
  const jobs = verbose ? 1 : Math.max(1, jobsArg ? Number(jobsArg.slice(7)) : Math.min(2, availableParallelism()));

  const installed = [];
  for (const r of runtimes) {
    if (!r.bin) {
      console.log(`${r.name}: skipped, not installed for ${platform}-${arch}`);
      continue;
    }
    const mine = [];
    for (const f of files) {
      const reason = fileSkips[f]?.[r.name];
      if (reason) console.log(`${r.name}: skipping ${f}: ${reason}`);
      else if (named || r.host === true || hostOnly[f] === undefined) mine.push(f);
    }
    if (mine.length === 0) continue;
    console.log(`${r.name}: ${r.version}, ${mine.length} suite${mine.length === 1 ? '' : 's'} (TypeScript: ${r.loader})`);
    installed.push({ runtime: r, files: mine, results: new Map() });
  }

  // One run per file: Bun runs all files of one `bun test` in one process,
  // sharing module state (such as the backend a suite switched to); Node.js
  // and Deno isolate files. One file a run isolates them everywhere, shows
  // which file crashed a runtime, and times each file.
  const everything = installed.flatMap((entry) => entry.files.map((file) => ({ entry, file })));
  const alone = everything.filter((job) => measuresSystem.has(job.file));
  const queue = everything.filter((job) => !measuresSystem.has(job.file));
  const started = Date.now();
  const report = (entry) => {
    const r = entry.runtime;
    const c = { passed: 0, failed: 0, skipped: 0 };
    const problems = [];
    const skips = [];
    let seconds = 0;
    for (const file of entry.files) {
      const { res, part } = entry.results.get(file);
      seconds += res.seconds;
      c.passed += part.passed;
      c.failed += part.failed;
      c.skipped += part.skipped;
      let problem;
      if (res.timedOut) problem = `killed after ${res.seconds.toFixed(0)} s (${timeoutMs / 1000} s without output, or ${(timeoutMs * 4) / 1000} s in all)`;
      else if (res.signal) problem = `ended by ${res.signal}`;
      else if (res.code !== 0) problem = `exit code ${res.code}`;
      else if (!part.found) problem = 'no test summary found';
      else if (part.endedEarly) problem = 'the process was ended before every test ran';
      if (problem !== undefined || part.failed > 0) {
        entry.ok = false;
        // A file that crashed or printed no summary counts as one failure.
        if (part.failed === 0) c.failed += 1;
        if (!verbose) {
          const label = `${r.name} ${file}`;
          process.stdout.write(`----- ${label} output -----\n${res.out}${res.out.endsWith('\n') ? '' : '\n'}----- end of ${label} output -----\n`);
        }
      }
      if (problem !== undefined) problems.push(`${file}: ${problem}`);
      for (const skip of parseSkips(r.name, res.out)) skips.push({ file, ...skip });
      if (times) console.log(`  ${r.name} ${file}: ${part.passed} passed, ${part.failed} failed, ${part.skipped} skipped in ${res.seconds.toFixed(1)} s`);
    }
    let line = `${r.name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped, ${seconds.toFixed(1)} s of runs`;
    if (problems.length > 0) line += ` (${problems.join('; ')})`;
    console.log(line);
    entry.line = line;
    entry.counts = c;
    entry.skips = skips;
  };

  // Results print in runtime order, each as soon as it and those before it are done.
  let printed = 0;
  const flush = () => {
    while (printed < installed.length && installed[printed].results.size === installed[printed].files.length) {
      report(installed[printed]);
      printed += 1;
    }
  };
  const worker = async () => {
    for (let job = queue.shift(); job !== undefined; job = queue.shift()) {
      const res = await run(job.entry.runtime, [job.file], verbose, timeoutMs);
      job.entry.results.set(job.file, { res, part: parseCounts(job.entry.runtime.name, res.out) });
      flush();
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  // Suites that measure the whole system's memory run last, one at a time.
  queue.push(...alone);
  await worker();

  const total = { passed: 0, failed: 0, skipped: 0 };
  console.log('');
  for (const entry of installed) {
    console.log(`  ${entry.line}`);
    // Every skipped test by name, so a skip that hides a platform shows.
    for (const skip of entry.skips) console.log(`    skipped ${skip.file}: ${skip.name} (${skip.reason})`);
    total.passed += entry.counts.passed;
    total.failed += entry.counts.failed;
    total.skipped += entry.counts.skipped;
  }
  console.log(`  ${((Date.now() - started) / 1000).toFixed(1)} s in all, ${jobs} file${jobs === 1 ? '' : 's'} at a time`);
  console.log(`runtimes: ${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
  if (installed.some((entry) => entry.ok === false)) process.exitCode = 1;
}

await main();
