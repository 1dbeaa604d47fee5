/**
 * The README and docs/ keep their promises: every `npx arm` command shown names a real command, only its options
 * and every required one, and input files that exist; every link points to a file in the repository; every
 * environment variable the source reads is documented in the README; the quickstart fits in 15 lines.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { buildProgram } from '../../src/cli/main.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (f: string) => fs.readFileSync(path.join(ROOT, f), 'utf8');
const DOCS = [
  'README.md',
  ...fs
    .readdirSync(path.join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const README = read('README.md');

/** The shell commands in a Markdown text's bash blocks, continuation lines joined and comments dropped. */
function bashCommands(markdown: string): string[] {
  const blocks = [...markdown.matchAll(/```bash\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks.flatMap((b) =>
    b
      .replace(/\\\n\s*/g, ' ')
      .split('\n')
      .map((l) => l.replace(/\s+#.*$/, '').trim())
      .filter((l) => l && !l.startsWith('#')),
  );
}

/** Splits a command line into words, keeping quoted strings whole (quotes removed). */
const words = (line: string) => [...line.matchAll(/'([^']*)'|"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]!);

describe('README', () => {
  const commands = buildProgram().commands;
  const armLines = bashCommands(README)
    .flatMap((l) => l.split(/ && | & ?$/))
    .filter((l) => l.trim().startsWith('npx arm '));

  it.each(armLines)('%s: a real command, its own options, every required one, inputs that exist', (line) => {
    const [, , name, ...args] = words(line.trim());
    const cmd = commands.find((c) => c.name() === name);
    expect(cmd, `no command ${name}`).toBeDefined();
    const flags = args.filter((a) => a.startsWith('--'));
    for (const f of flags)
      expect(
        cmd!.options.map((o) => o.long),
        f,
      ).toContain(f);
    for (const o of cmd!.options.filter((x) => x.mandatory)) expect(flags).toContain(o.long);
    for (const input of ['--model', '--examples', '--input', '--dataset']) {
      const at = args.indexOf(input);
      const value = at >= 0 ? args[at + 1]! : undefined;
      if (value && /^(models|examples)\//.test(value)) expect(fs.existsSync(path.join(ROOT, value)), value).toBe(true);
    }
  });

  it('has a quickstart of at most 15 lines, covering install, fit, score, eval, serve and curl', () => {
    const quick = /## Quickstart[\s\S]*?```bash\n([\s\S]*?)```/.exec(README)![1]!.trim().split('\n');
    expect(quick.length).toBeLessThanOrEqual(15);
    const text = quick.join('\n');
    for (const step of ['npm install', 'npx arm fit', 'npx arm score', 'npx arm eval', 'npx arm serve', 'curl'])
      expect(text).toContain(step);
    expect(text).toContain('--template-text "{prompt} {response}"'); // icl-tiny's vocabulary has no English
  });

  it('documents every environment variable the source reads', () => {
    // Read as env.NAME or env['NAME'], through a helper named like env…('NAME'), or named by a …_ENV constant or a
    // …Env field (a table of variables, as --shard auto's schedulers).
    const patterns = [
      /env(?:\.([A-Z][A-Z0-9_]+)|\[['"]([A-Z][A-Z0-9_]+)['"]\])/g,
      /\b\w*[eE]nv\w*\(\s*['"]([A-Z][A-Z0-9_]+)['"]/g,
      /_ENV\s*=\s*['"]([A-Z][A-Z0-9_]+)['"]/g,
      /\w+Env:\s*['"]([A-Z][A-Z0-9_]+)['"]/g,
    ];
    const names = new Set<string>();
    const scan = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) scan(p);
        else if (p.endsWith('.ts')) {
          const text = fs.readFileSync(p, 'utf8');
          for (const re of patterns) for (const m of text.matchAll(re)) names.add((m[1] ?? m[2])!);
        }
      }
    };
    scan(path.join(ROOT, 'src'));
    for (const known of ['ARM_CACHE_DIR', 'HF_HOME', 'ARM_MAX_IMAGE_PIXELS', 'SLURM_ARRAY_TASK_COUNT'])
      expect(names).toContain(known);
    const table = /## Environment variables([\s\S]*?)\n## /.exec(README)![1]!;
    for (const name of names) expect(table, name).toContain(name);
  });

  it('says nothing is coming "soon"', () => {
    for (const f of DOCS) expect(read(f), f).not.toMatch(/\(soon\)/i);
  });
});

describe.each(DOCS)('%s', (file) => {
  it('links only to files in the repository', () => {
    const text = read(file).replace(/```[\s\S]*?```/g, '');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      expect(target, `${file}: ${target}`).not.toMatch(/^[a-z]+:/i);
      const [p] = target!.split('#');
      if (!p) continue; // an anchor in the same file
      const resolved = path.resolve(path.dirname(path.join(ROOT, file)), p);
      expect(resolved.startsWith(ROOT + path.sep), `${file}: ${target} leaves the repository`).toBe(true);
      expect(fs.existsSync(resolved), `${file}: ${target}`).toBe(true);
    }
  });
});
