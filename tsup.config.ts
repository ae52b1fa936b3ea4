import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // tsup 8 sets `baseUrl` for its declaration build, which TypeScript 6
  // reports as deprecated; the option does nothing else here.
  dts: { compilerOptions: { ignoreDeprecations: '6.0' } },
  clean: true,
  sourcemap: true,
  target: 'es2022',
  platform: 'node',
  external: ['koffi'],
});
