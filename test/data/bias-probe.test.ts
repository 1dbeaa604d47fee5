// arm bias-probe on llmbar (the files it writes, each bias's transform, determinism) and the transforms alone.
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import {
  buildProbe,
  charLength,
  markdownScore,
  positivityScore,
  stripMarkdown,
  type BiasKind,
  type ProbeRow,
} from '../../src/data/bias-probe.js';
import { arm } from '../helpers/cli.js';
import { PREFERENCE_DATA, tempDir } from '../helpers/fixtures.js';

const LLMBAR = path.join(PREFERENCE_DATA, 'llmbar.jsonl');
const llmbar = readExamples(LLMBAR).examples as PairExample[];
const readRows = (file: string): ProbeRow[] =>
  fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));

// Measures written here from the wording, independently of the module's own: a markdown header, a bullet
// and a bold span are "markdown markers"; an exclamation or a word of praise is an "enthusiastic phrase".
const hasMarkdown = (t: string) => /^## /m.test(t) && /^- /m.test(t) && /\*\*[^*]+\*\*/.test(t);
const cheer = (t: string) =>
  (t.match(/!(\s|$)/g)?.length ?? 0) +
  (t.match(/\b(great|wonderful|love|glad|happy to help|absolutely|best of luck|fantastic)\b/gi)?.length ?? 0);

describe('arm bias-probe on llmbar', () => {
  const out = tempDir('arm-probes-');
  arm(['bias-probe', '--dataset', LLMBAR, '--bias', 'length,format,positivity', '--out', out]);
  const files = (kind: BiasKind) => ({
    biased: readRows(path.join(out, `llmbar-${kind}.jsonl`)),
    flipped: readRows(path.join(out, `llmbar-${kind}-flipped.jsonl`)),
  });

  it(
    'writes <name>-<bias>.jsonl and <name>-<bias>-flipped.jsonl with the same pairs, ids, ' +
      'subsets and prompts as the source',
    () => {
      expect(fs.readdirSync(out).sort()).toEqual([
        'llmbar-format-flipped.jsonl',
        'llmbar-format.jsonl',
        'llmbar-length-flipped.jsonl',
        'llmbar-length.jsonl',
        'llmbar-positivity-flipped.jsonl',
        'llmbar-positivity.jsonl',
      ]);
      const byId = new Map(llmbar.map((p) => [p.id, p]));
      for (const kind of ['length', 'format', 'positivity'] as const) {
        const { biased, flipped } = files(kind);
        expect(biased.map((r) => r.id)).toEqual(flipped.map((r) => r.id));
        expect(biased.length).toBeGreaterThanOrEqual(415); // at most a handful left out
        for (const r of [...biased, ...flipped]) {
          const src = byId.get(r.id)!;
          expect(r.prompt).toEqual(src.prompt);
          expect(r.subset).toBe(src.subset);
          expect(r.bias.kind).toBe(kind);
        }
        expect(biased.every((r) => r.bias.split === 'biased' && r.bias.side === 'rejected')).toBe(true);
        expect(flipped.every((r) => r.bias.split === 'flipped' && r.bias.side === 'chosen')).toBe(true);
      }
      // Every llmbar pair can be padded: none left out of the length probe.
      expect(files('length').biased.length).toBe(419);
    },
  );

  it(
    'length: every biased rejected is longer than its chosen, every flipped chosen longer than ' +
      'its rejected; the untouched side is verbatim',
    () => {
      const { biased, flipped } = files('length');
      const byId = new Map(llmbar.map((p) => [p.id, p]));
      for (const r of biased) {
        expect([...r.rejected].length).toBeGreaterThan([...r.chosen].length);
        expect(r.chosen).toBe(byId.get(r.id)!.chosen);
        // padding is appended, nothing changed
        expect(r.rejected.startsWith(byId.get(r.id)!.rejected.trimEnd())).toBe(true);
      }
      for (const r of flipped) {
        expect([...r.chosen].length).toBeGreaterThan([...r.rejected].length);
        expect(r.rejected).toBe(byId.get(r.id)!.rejected);
      }
    },
  );

  it('format: the biased rejected (flipped chosen) has a header, bullets and bold, the other side none of them', () => {
    const { biased, flipped } = files('format');
    for (const [rows, marked, plain] of [
      [biased, 'rejected', 'chosen'],
      [flipped, 'chosen', 'rejected'],
    ] as const) {
      for (const r of rows) {
        expect(hasMarkdown(r[marked])).toBe(true);
        expect(markdownScore(r[marked])).toBeGreaterThan(markdownScore(r[plain]));
        expect(/\*\*[^*\n]+\*\*/.test(r[plain].replace(/```[\s\S]*?```/g, ''))).toBe(false);
      }
    }
  });

  it('positivity: the biased rejected (flipped chosen) carries more enthusiastic phrases than the other side', () => {
    const { biased, flipped } = files('positivity');
    for (const r of biased) expect(cheer(r.rejected)).toBeGreaterThan(cheer(r.chosen));
    for (const r of flipped) expect(cheer(r.chosen)).toBeGreaterThan(cheer(r.rejected));
  });

  it('is deterministic: a second run writes the same bytes', () => {
    const again = tempDir('arm-probes-');
    arm(['bias-probe', '--dataset', LLMBAR, '--bias', 'positivity', '--out', again]);
    expect(fs.readFileSync(path.join(again, 'llmbar-positivity.jsonl'), 'utf8')).toBe(
      fs.readFileSync(path.join(out, 'llmbar-positivity.jsonl'), 'utf8'),
    );
  });

  it('refuses an unknown bias, naming the known ones', () => {
    const r = arm(['bias-probe', '--dataset', LLMBAR, '--bias', 'verbosity', '--out', tempDir()], { expectFail: true });
    expect(r.stderr).toMatch(/unknown verbosity; known: length, format, positivity/);
  });
});

describe('transforms', () => {
  const pair = (chosen: string, rejected: string): PairExample => ({
    kind: 'pair',
    id: 'x',
    line: 1,
    row: {},
    prompt: 'q',
    chosen,
    rejected,
  });

  it('length padding beats a much longer other response too, escalating instead of giving up', () => {
    const p = pair('short answer', 'a'.repeat(5000));
    const { flipped } = buildProbe([p], 'length');
    expect(charLength(flipped[0]!.chosen)).toBeGreaterThan(5000);
  });

  it('markdown inside code blocks is neither counted nor stripped', () => {
    const code = 'Use this:\n```python\n# comment\nx = a**2 + b**2\n- 1\n```';
    expect(markdownScore(code)).toBe(0);
    expect(stripMarkdown(code)).toBe(code);
    expect(stripMarkdown('## Title\n- **bold** point')).toBe('Title\nbold point');
  });

  it('positivity counts sentence-ending exclamations, not code operators', () => {
    expect(positivityScore('if (a != b) return !x;')).toBe(0);
    expect(positivityScore('Great question! Happy to help!')).toBeGreaterThanOrEqual(3);
  });
});
