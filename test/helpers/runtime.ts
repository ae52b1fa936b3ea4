// What a test needs to be portable across Node.js, Bun and Deno: where the
// project is (no `__dirname` in ES modules, no `import.meta` under ts-node's
// CommonJS), and how to start a TypeScript file in a child process on the
// runtime running the test, loading TypeScript the same way.
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';

/** `'node'`, `'bun'` or `'deno'`, from the runtime's own globals. */
export const runtime: 'node' | 'bun' | 'deno' =
  'Bun' in globalThis ? 'bun' : 'Deno' in globalThis ? 'deno' : 'node';

function findRoot(): string {
  let dir = process.cwd();
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'memfork') {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`Cannot find the memfork project from ${process.cwd()}`);
    dir = parent;
  }
}

/** The project's root folder, found from the working directory upwards. */
export const projectRoot: string = findRoot();

/**
 * Deno permissions for a child process of a test: all of them, as the test
 * runner has (Deno reads /proc/self/maps through node:fs only with --allow-all).
 */
export const denoPermissions: readonly string[] = ['--allow-all'];

/** Options of {@link tsCommand}. */
export interface TsCommandOptions {
  /** Make `globalThis.gc` available in the child. */
  exposeGc?: boolean;
}

/**
 * The command that runs the TypeScript file `file` with `args` on this
 * runtime: Deno with the permissions above, Bun as is, Node.js with ts-node
 * when this process uses it (or has no type stripping), otherwise with its
 * own type stripping.
 *
 * @example
 * ```ts
 * const { command, args } = tsCommand(path.join(projectRoot, 'test', 'fixtures', 'x.ts'), ['linux']);
 * const child = spawnSync(command, args, { cwd: projectRoot, encoding: 'utf8' });
 * ```
 */
export function tsCommand(file: string, args: readonly string[] = [], options: TsCommandOptions = {}): { command: string; args: string[] } {
  const command = process.execPath;
  if (runtime === 'deno') {
    const v8 = options.exposeGc ? ['--v8-flags=--expose-gc'] : [];
    return { command, args: ['run', '--no-check', '--no-lock', ...denoPermissions, ...v8, file, ...args] };
  }
  const gc = options.exposeGc ? ['--expose-gc'] : [];
  if (runtime === 'bun') return { command, args: [...gc, file, ...args] };
  const usesTsNode = process.execArgv.some((a) => a.includes('ts-node'));
  const strips = typeof (process.features as { typescript?: unknown }).typescript === 'string';
  if (usesTsNode || !strips) return { command, args: [...gc, '-r', 'ts-node/register', file, ...args] };
  return { command, args: [...gc, '--disable-warning=MODULE_TYPELESS_PACKAGE_JSON', file, ...args] };
}
