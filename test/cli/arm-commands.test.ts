// arm fit, inspect and score end to end on stories260K, and score refusing a criterion from another model.
import { expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { arm } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const EXAMPLES = path.resolve(import.meta.dirname, '../../examples/concise');

it('arm fit → inspect → score on stories260K with the bundled example', () => {
  const out = path.join(tempDir(), 'concise.arm.safetensors');
  const fit = [
    'fit',
    '--model',
    STORIES,
    '--examples',
    path.join(EXAMPLES, 'few.jsonl'),
    '--out',
    out,
    '--passes',
    '12',
    '--steps',
    '30',
    '--seed',
    '1',
  ];
  arm(fit);
  expect(fs.existsSync(out)).toBe(true);
  expect(fs.existsSync(`${out}.fit-checkpoint.json`)).toBe(false);
  const meta = JSON.parse(arm(['inspect', out, '--json']).stdout);
  expect(meta.seed).toBe(1);
  expect(meta.hyper.passes).toBe(12);
  expect(meta.examples.count).toBe(10);
  expect(meta.answerTokens.strings).toEqual(['Yes', 'No']);
  expect(arm(['inspect', out]).stdout).toMatch(/selection probability/);

  const scored = path.join(tempDir(), 'scored.jsonl');
  arm(['score', '--model', STORIES, '--rm', out, '--input', path.join(EXAMPLES, 'items.jsonl'), '--output', scored]);
  const rows = fs
    .readFileSync(scored, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const input = fs
    .readFileSync(path.join(EXAMPLES, 'items.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(rows.length).toBe(input.length);
  rows.forEach((r, i) => {
    expect({ ...r, arm: undefined }).toEqual({ ...input[i], arm: undefined }); // every input field kept
    if ('chosen' in input[i]) expect(r.arm.correct).toBe(r.arm.chosen > r.arm.rejected);
    else expect(r.arm.reward).toBeGreaterThan(0);
  });

  // Same seed, same file content (apart from the fit's wall time and date).
  const again = path.join(tempDir(), 'again.arm.safetensors');
  arm([...fit.slice(0, 6), again, ...fit.slice(7)]);
  const a = JSON.parse(arm(['inspect', out, '--json']).stdout),
    b = JSON.parse(arm(['inspect', again, '--json']).stdout);
  expect({ ...b, fit: null }).toEqual({ ...a, fit: null });
});

it('arm score refuses a criterion from another model', () => {
  const out = path.join(tempDir(), 'c.arm.safetensors');
  arm([
    'fit',
    '--model',
    STORIES,
    '--examples',
    path.join(EXAMPLES, 'few.jsonl'),
    '--out',
    out,
    '--passes',
    '4',
    '--steps',
    '2',
    '--heads',
    'random:3',
  ]);
  const other = tempDir();
  for (const f of fs.readdirSync(STORIES)) fs.copyFileSync(path.join(STORIES, f), path.join(other, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(other, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(other, 'config.json'), JSON.stringify({ ...cfg, rms_norm_eps: 1e-6 }));
  const r = arm(
    [
      'score',
      '--model',
      other,
      '--rm',
      out,
      '--input',
      path.join(EXAMPLES, 'items.jsonl'),
      '--output',
      path.join(other, 'x.jsonl'),
    ],
    { expectFail: true },
  );
  expect(r.stderr).toMatch(/c\.arm\.safetensors: fitted on model .* differs in its config\.json/);
});
