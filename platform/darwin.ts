// PLACEHOLDER (being replaced): macOS backend.
import type { Backend } from '../src/backend.ts';
export class DarwinBackend {
  constructor() { throw new Error('not implemented'); }
}
export type _B = Backend;
