import { Segment } from './src/index.ts';
const size = 1 << 30, PAGE = 4096, pages = size / PAGE, one = pages / 100;
const s = Segment.create(size);
const u = new Uint8Array(s.buffer);
u.fill(1);
const dst = new Uint8Array(size); dst.set(u);
let t = performance.now(); s.clone().close(); console.log('first', (performance.now() - t).toFixed(2));
for (let k = 0; k < 15; k++) s.clone().close();
let v = 3;
for (const mode of ['random', 'random']) {
  const xs: number[] = [];
  for (let k = 0; k < 15; k++) {
    for (let j = 0; j < one; j++) u[Math.floor(Math.random() * pages) * PAGE + 7] = v++;
    t = performance.now(); const c = s.clone(); xs.push(performance.now() - t); c.close();
  }
  console.log(mode, xs.map((x) => x.toFixed(1)).join(' '));
}
