// The Linux backend (see backend.ts), and the parts tests drive apart from it.
export { LinuxBackend, type LinuxOptions } from './backend.ts';
export type { LinuxSegment } from './engine.ts';
export { Layer } from './layers.ts';
export type { ScanMethod } from './scan.ts';
export { HOLE_MIN_PAGES, MAX_HOLES, duplicateLimit, worthwhileHoles } from './cost.ts';
