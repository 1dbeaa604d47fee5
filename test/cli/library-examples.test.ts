/**
 * The library snippets run as written in a new project that installs the package: the test lays out in a fresh
 * project's node_modules exactly the files `npm pack` puts in the tarball (as npm would unpack it) and links the
 * package's runtime dependencies from this repository's node_modules (npm would copy the same versions; linking
 * keeps the test offline and fast), then runs each file of examples/library there with plain `node`. The snippets
 * shown in the README and docs/library.md must be those files, byte for byte.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers/fixtures.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const LIBRARY = path.join(ROOT, 'examples/library');
const snippets = fs.readdirSync(LIBRARY).filter((f) => f.endsWith('.mjs'));
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
};
let project: string;
let packed: string[];

/** The newest modification time of the files under `dir` (0 when it does not exist). */
function newest(dir: string): number {
  if (!fs.existsSync(dir)) return 0;
  const entries = fs.readdirSync(dir, { recursive: true, withFileTypes: true });
  return Math.max(0, ...entries.map((e) => (e.isFile() ? fs.statSync(path.join(e.parentPath, e.name)).mtimeMs : 0)));
}

/**
 * The built library: dist/ as `prepare` left it (CI's clean install), or, when src/ changed since, a build of the
 * sources into a temporary folder (this checkout's dist/ is left alone; tsc's status is not checked: type errors
 * are `npm test`'s first step, and tsc emits JavaScript through them).
 */
function builtLibrary(): string {
  const dist = path.join(ROOT, 'dist');
  if (newest(dist) >= newest(path.join(ROOT, 'src'))) return dist;
  const out = tempDir('arm-dist-');
  spawnSync(
    process.execPath,
    [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json', '--outDir', out],
    {
      cwd: ROOT,
      stdio: 'ignore',
    },
  );
  return out;
}

beforeAll(() => {
  const report = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }),
  ) as { files: { path: string }[] }[];
  packed = report[0]!.files.map((f) => f.path);
  project = tempDir('arm-library-project-');
  const installed = path.join(project, 'node_modules/activation-rm');
  for (const f of packed.filter((x) => !x.startsWith('dist/'))) {
    fs.mkdirSync(path.dirname(path.join(installed, f)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, f), path.join(installed, f));
  }
  fs.cpSync(builtLibrary(), path.join(installed, 'dist'), { recursive: true });
  for (const dep of Object.keys(pkg.dependencies)) {
    fs.mkdirSync(path.dirname(path.join(project, 'node_modules', dep)), { recursive: true });
    fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(project, 'node_modules', dep), 'dir');
  }
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'my-project', private: true }));
  for (const f of snippets) fs.copyFileSync(path.join(LIBRARY, f), path.join(project, f));
}, 300_000);

/** Runs `node <file>` in the project; its stdout. */
const run = (file: string) =>
  execFileSync(process.execPath, [file], {
    cwd: project,
    encoding: 'utf8',
    env: { ...process.env, ARM_CACHE_DIR: path.join(project, 'cache') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

describe('the library snippets in a project that installed the package', () => {
  it('are shown in docs/library.md as they are in examples/library, and the README shows the first', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs/library.md'), 'utf8');
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(snippets).toEqual(['fit-and-score.mjs', 'forward.mjs', 'server.mjs']);
    for (const f of snippets) expect(doc).toContain('```js\n' + fs.readFileSync(path.join(LIBRARY, f), 'utf8') + '```');
    expect(readme).toContain('```js\n' + fs.readFileSync(path.join(LIBRARY, 'fit-and-score.mjs'), 'utf8') + '```');
  });

  it("the package ships the built library, the command, the bundled model and the snippets' data", () => {
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'bin/arm.js', 'LICENSE', 'README.md', 'CHANGELOG.md'])
      expect(packed).toContain(f);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
      expect(packed).toContain(`models/icl-tiny/${f}`);
    for (const f of ['few.jsonl', 'test.jsonl']) expect(packed).toContain(`examples/library/${f}`);
    expect(packed.some((f) => f.startsWith('src/') || f.startsWith('test/'))).toBe(false);
  });

  it('fit-and-score.mjs fits, saves, loads and scores: icl-tiny learns the criterion (≥ 36 of 40 pairs)', () => {
    const out = run('fit-and-score.mjs');
    const [, right, total] = /accuracy (\d+)\/(\d+)/.exec(out)!;
    const testPairs = fs.readFileSync(path.join(LIBRARY, 'test.jsonl'), 'utf8').trim().split('\n').length;
    expect(Number(total)).toBe(testPairs);
    expect(Number(right)).toBeGreaterThanOrEqual(36);
    expect(fs.existsSync(path.join(project, 'first-low.arm.safetensors'))).toBe(true);
  });

  it('forward.mjs reads the model shape and patches a head', () => {
    const config = JSON.parse(fs.readFileSync(path.join(ROOT, 'models/icl-tiny/config.json'), 'utf8'));
    const out = run('forward.mjs');
    const d = config.hidden_size / config.num_attention_heads;
    expect(out).toContain(`${config.num_hidden_layers} layers × ${config.num_attention_heads} heads of ${d}`);
    const [, before, after] = /: (-?[\d.]+) → (-?[\d.]+) patched/.exec(out)!;
    expect(Number(before)).not.toBe(Number(after));
  });

  it('server.mjs answers /v1/score with the pair scored (after fit-and-score.mjs)', () => {
    const [status, body] = run('server.mjs').trim().split('\n').at(-1)!.split(/ (.*)/);
    expect(status).toBe('200');
    const result = JSON.parse(body!) as { criterion: string; results: { chosen: number; correct: boolean }[] };
    expect(result.criterion).toBe('first-low');
    expect(result.results).toHaveLength(1);
    expect(result.results[0]!.correct).toBe(true);
  });

  it('the installed command prints the package version', () => {
    const bin = path.join(project, 'node_modules/activation-rm/bin/arm.js');
    expect(execFileSync(process.execPath, [bin, '--version'], { encoding: 'utf8' })).toBe(`${pkg.version}\n`);
  });
});
