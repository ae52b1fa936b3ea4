// What the bench reads from /proc: files, kB fields, and the memory a process
// holds in anonymous pages and memory files.
import * as fs from 'node:fs';

/** A /proc file's text, or '' where it cannot be read. */
export function readProc(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** A `Key:   N kB` field of a /proc text, in bytes (NaN when absent). */
export function kb(text: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m === null ? NaN : Number(m[1]) * 1024;
}

/** This process's anonymous pages plus the pages of every memory file it maps or holds open, each file counted once. */
export function heldMemory(): number {
  let total = kb(readProc('/proc/self/status'), 'RssAnon');
  const seen = new Set<string>();
  for (const dir of ['/proc/self/fd', '/proc/self/map_files']) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      try {
        const p = `${dir}/${name}`;
        if (!fs.readlinkSync(p).startsWith('/memfd:')) continue;
        const st = fs.statSync(p);
        const key = `${st.dev}:${st.ino}`;
        if (!seen.has(key)) {
          seen.add(key);
          total += st.blocks * 512;
        }
      } catch {
        // gone meanwhile
      }
    }
  }
  return total;
}
