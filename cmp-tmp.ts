import { Segment, memoryStats } from './src/index';
const MiB = 1 << 20, P = 4096, size = +(process.env.SIZE ?? 1024) * MiB, pages = size / P;
const s = Segment.create(size);
const W = 1 << 30;
const views: Uint8Array[] = []; for (let o = 0; o < size; o += W) views.push(new Uint8Array(s.view(o, Math.min(W, size - o))));
const put = (p: number, v: number) => { const o = p * P; views[Math.floor(o / W)]![o % W] = v; };
for (let p = 0; p < pages; p++) put(p, 1);
s.clone().close();
for (let rep = 0; rep < 5; rep++) {
  const set = new Set<number>(); while (set.size < pages / 100) set.add(Math.floor(Math.random() * pages));
  for (const p of set) put(p, rep + 5);
  const t = process.hrtime.bigint(); const c = s.clone(); const d = Number(process.hrtime.bigint() - t) / 1e6;
  console.log('1% random clone', d.toFixed(0), 'ms, mappings', memoryStats().mappings); c.close();
}
