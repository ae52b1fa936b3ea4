import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // Declarations without what is marked @internal (the backend interface, the
  // constructor's parameters). tsup 8 sets `baseUrl` for its declaration
  // build, which TypeScript 6 reports as deprecated; it does nothing else here.
  dts: { compilerOptions: { stripInternal: true, ignoreDeprecations: '6.0' } },
  clean: true,
  sourcemap: true,
  target: 'es2022',
  platform: 'node',
  external: ['koffi'],
  // esbuild renames a class that refers to itself (`_Segment`); keep the
  // names users see in util.inspect and stack traces.
  keepNames: true,
});
