// What the kernel says about this process, read from /proc: open file
// descriptors, mappings and memory. Linux only; every suite that uses it
// skips elsewhere with `linuxOnly`.
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

function procReason(): false | string {
  if (process.platform !== 'linux') return 'Linux only: reads /proc and uses memfd';
  try {
    readdirSync('/proc/self/fd');
    readFileSync('/proc/self/maps');
    return false;
  } catch (err) {
    // Deno, for one, lets only --allow-all read /proc/self.
    return `this runtime may not read /proc/self here (${(err as Error).message.split('\n')[0]})`;
  }
}

/** `false`, or the reason a Linux-only suite is skipped (for `{ skip }`). */
export const linuxOnly: false | string = procReason();

/** Number of entries in /proc/self/fd (including the one used to list it). */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Every open descriptor and what it links to, e.g. `/memfd:memfork (deleted)`. */
export function fdTargets(): { fd: number; target: string }[] {
  const out: { fd: number; target: string }[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.push({ fd: Number(name), target: readlinkSync(`/proc/self/fd/${name}`) });
    } catch {
      // The descriptor used to list the directory is gone by now.
    }
  }
  return out;
}

/** Descriptors of memfork's memory files (layers). */
export function layerFds(): number[] {
  return fdTargets()
    .filter((f) => f.target.startsWith('/memfd:memfork'))
    .map((f) => f.fd);
}

/** The lines of /proc/self/maps. */
export function mapsLines(): string[] {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l !== '');
}

/** Number of lines (VMAs) in /proc/self/maps. */
export function mapsCount(): number {
  return mapsLines().length;
}

/** Number of mappings of memfork's memory files. */
export function layerMapsCount(): number {
  let n = 0;
  for (const l of mapsLines()) if (l.includes('memfd:memfork')) n++;
  return n;
}

/** The /proc/self/maps line of the mapping that covers `addr`, if any. */
export function mappingAt(addr: bigint): string | undefined {
  for (const l of mapsLines()) {
    const dash = l.indexOf('-');
    const space = l.indexOf(' ');
    const start = BigInt(`0x${l.slice(0, dash)}`);
    const end = BigInt(`0x${l.slice(dash + 1, space)}`);
    if (addr >= start && addr < end) return l;
  }
  return undefined;
}

/** A `Name:   N kB` field of a /proc file's text, in bytes. */
export function kbField(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  if (m === null) throw new Error(`no ${field} field`);
  return Number(m[1]) * 1024;
}

/** System-wide Shmem + AnonPages from /proc/meminfo, in bytes (other processes add noise). */
export function systemMemory(): number {
  const text = readFileSync('/proc/meminfo', 'utf8');
  return kbField(text, 'Shmem') + kbField(text, 'AnonPages');
}

/**
 * Resident anonymous + shared-memory bytes of every other process
 * (Σ RssAnon + RssShmem): what they add to {@link systemMemory}, near enough.
 */
export function othersMemory(): number {
  let total = 0;
  const self = String(process.pid);
  for (const pid of readdirSync('/proc')) {
    if (pid === self || !/^\d+$/.test(pid)) continue;
    try {
      const text = readFileSync(`/proc/${pid}/status`, 'utf8');
      if (!text.includes('RssAnon:')) continue; // kernel threads
      total += kbField(text, 'RssAnon') + kbField(text, 'RssShmem');
    } catch {
      // The process ended meanwhile.
    }
  }
  return total;
}

/**
 * Bytes allocated to the memory files (memfds) this process holds open whose
 * name starts with `prefix` (all of them by default): pages a descriptor
 * keeps alive whether mapped or not, which resident-memory figures miss.
 */
export function memfdBytes(prefix = '/memfd:'): number {
  let total = 0;
  for (const { fd, target } of fdTargets()) {
    if (!target.startsWith(prefix)) continue;
    try {
      total += statSync(`/proc/self/fd/${fd}`).blocks * 512;
    } catch {
      // Closed meanwhile (by another thread's runtime).
    }
  }
  return total;
}

/** A field of /proc/self/smaps_rollup (this process's mappings summed), in bytes. */
export function rollup(field: 'Rss' | 'Anonymous' | 'Pss_Shmem' | 'Private_Dirty' | 'Shared_Dirty'): number {
  return kbField(readFileSync('/proc/self/smaps_rollup', 'utf8'), field);
}

/** This process's resident anonymous + shared-memory bytes (RssAnon + RssShmem). */
export function processMemory(): number {
  const text = readFileSync('/proc/self/status', 'utf8');
  return kbField(text, 'RssAnon') + kbField(text, 'RssShmem');
}

/** glibc's HEAP_MAX_SIZE on 64-bit systems: the size and alignment of a thread arena's heap. */
const HEAP_MAX = 64n << 20n;

/**
 * The mappings that look like memfork's own, whatever their size: anonymous
 * or of a memfork memory file, mapped MAP_NORESERVE (`nr`: every mapping
 * memfork makes is, its address-space reservations too) and not marked
 * don't-fork (`dc`) the way V8 marks its heap; readable and writable, or
 * inaccessible (PROT_NONE: a reservation left behind). A glibc thread
 * arena's heap (its 64 MiB reservation included) is not memfork's. Mappings
 * of memfork's memory files always count. V8 and libuv map and unmap their
 * own memory at any time; these lines stay put. `maxBytes` limits the size
 * of the anonymous ones counted (all by default).
 */
export function segmentLikeMaps(maxBytes = Number.MAX_SAFE_INTEGER): string[] {
  const out: string[] = [];
  const entries = readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
  const range = (e: string | undefined): { fields: string[]; start?: bigint; end?: bigint } => {
    const nl = e === undefined ? -1 : e.indexOf('\n');
    const fields = (e === undefined ? '' : nl < 0 ? e : e.slice(0, nl)).trim().split(/\s+/);
    const [start, end] = (fields[0] ?? '').split('-').map((x) => BigInt(`0x${x}`));
    return { fields, start, end };
  };
  let arenaEnd = -1n;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const nl = e.indexOf('\n');
    const head = nl < 0 ? e : e.slice(0, nl);
    const { fields, start, end } = range(e);
    if (start === undefined || end === undefined) continue;
    const perms = fields[1] ?? '';
    const path = fields.slice(5).join(' ');
    if (path.startsWith('/memfd:memfork')) {
      out.push(head.trim());
      continue;
    }
    if (path !== '') continue;
    if (!perms.startsWith('rw') && !perms.startsWith('---')) continue;
    // A glibc malloc heap of another thread's arena (Deno's threads make them
    // at any time): it starts on a 64 MiB boundary, and the rest of its 64 MiB
    // follows it reserved (---p).
    if (start < arenaEnd) continue;
    const next = range(entries[i + 1]);
    if (
      perms.startsWith('rw') &&
      start % HEAP_MAX === 0n &&
      next.start === end &&
      next.end !== undefined &&
      next.end <= start + HEAP_MAX &&
      (next.fields[1] ?? '').startsWith('---')
    ) {
      arenaEnd = next.end;
      continue;
    }
    if (end - start > BigInt(maxBytes)) continue;
    const flags = /^VmFlags:(.*)$/m.exec(e)?.[1]?.trim().split(/\s+/) ?? [];
    if (!flags.includes('nr') || flags.includes('dc')) continue;
    out.push(head.trim());
  }
  return out;
}

/** Everything a leak check compares. */
export interface ProcSnapshot {
  fds: number;
  maps: number;
  layerMaps: number;
  /** The lines of /proc/self/maps. */
  lines: string[];
}

export function snapshot(): ProcSnapshot {
  const lines = mapsLines();
  return {
    fds: openFds(),
    maps: lines.length,
    layerMaps: lines.filter((l) => l.includes('memfd:memfork')).length,
    lines,
  };
}

/**
 * Mappings made since `base` that look like memfork's ({@link segmentLikeMaps}),
 * at most `maxBytes` long: what a leak leaves behind, without the noise of V8,
 * JavaScriptCore and malloc.
 */
export function newSegmentLikeMaps(base: ProcSnapshot, maxBytes?: number): string[] {
  const was = new Set(base.lines.map((l) => l.trim()));
  const added = mapsLines()
    .map((l) => l.trim())
    .filter((l) => !was.has(l));
  if (added.length === 0) return [];
  const like = new Set(segmentLikeMaps(maxBytes));
  return added.filter((l) => like.has(l));
}

let gcFn: (() => void) | undefined;

/**
 * A full garbage collection, without `--expose-gc` on the command line: the
 * flag set at run time applies to contexts made afterwards.
 */
export function fullGc(): void {
  if (gcFn === undefined) {
    const global = (globalThis as { gc?: () => void }).gc;
    const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
    if (typeof global === 'function') {
      gcFn = global;
    } else if (bun !== undefined) {
      // Bun has no --expose-gc; Bun.gc(true) collects synchronously.
      gcFn = () => bun.gc(true);
    } else {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc') as () => void;
    }
  }
  gcFn();
}

/** Private (anonymous) bytes of this process's mappings inside [addr, addr + length), from /proc/self/smaps. */
export function anonymousIn(addr: bigint, length: number): number {
  const end = addr + BigInt(length);
  let total = 0;
  for (const block of readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const dash = block.indexOf('-');
    const start = BigInt(`0x${block.slice(0, dash)}`);
    if (start < addr || start >= end) continue;
    total += kbField(block, 'Anonymous');
  }
  return total;
}
