// PLACEHOLDER (being replaced): portable backend with eager copies.
import type { Backend, BackendMemory, BackendStats } from '../src/backend.ts';
import { maxViewLength } from '../src/runtime.ts';

export class CopyBackend implements Backend<{ mem: ArrayBuffer }> {
  readonly name = 'copy' as const;
  readonly pageSize = 4096;
  readonly maxViewLength = maxViewLength;
  create(length: number) { return { mem: new ArrayBuffer(length) }; }
  clone(s: { mem: ArrayBuffer }) { return { mem: s.mem.slice(0) }; }
  restore(t: { mem: ArrayBuffer }, s: { mem: ArrayBuffer }) { new Uint8Array(t.mem).set(new Uint8Array(s.mem)); }
  release(): void {}
  address(): bigint { return 0n; }
  view(h: { mem: ArrayBuffer }): ArrayBuffer { return h.mem; }
  stats(h: { mem: ArrayBuffer }): BackendStats { return { privateBytes: h.mem.byteLength, sharedBytes: 0, mappings: 0 }; }
  memory(): BackendMemory { return { layers: 0, layerBytes: 0, privateBytes: 0, mappings: 0 }; }
}
