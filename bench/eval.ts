/**
 * Eval benchmark (`npm run bench:eval`): forward tokens and wall time per evaluated pair for every method on
 * the Qwen2.5-0.5B-shaped random model, in one run of the real harness (one model load, one seed, a 4-pair
 * pool, 8 test pairs of ~300-token prompts). Fitting methods run with a reduced budget (passes 4, steps 4)
 * since this measures scoring cost; their preparation cost is reported separately.
 * Last line: one JSON object keyed by method: {"arm": {"tokensPerPair": …, "msPerPair": …, "prepareS": …}, …}
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Decoder } from '../src/model/decoder.js';
import { evaluate } from '../src/eval/harness.js';
import { METHODS } from '../src/eval/methods.js';
import type { PairExample } from '../src/data/examples.js';
import { Rng } from '../src/util/rng.js';
import { ensureQwenShapeCheckpoint } from './qwen-shape.js';

const rng = new Rng(2);
const WORDS = 'the cat sat on a mat and looked at big red ball she said tree park'.split(' ');
const text = (n: number) => Array.from({ length: n }, () => WORDS[rng.int(WORDS.length)]).join(' ');
const pairs: PairExample[] = Array.from({ length: 12 }, (_, i) => ({
  kind: 'pair',
  id: `p${i}`,
  line: i + 1,
  row: {},
  subset: 'bench',
  prompt: text(200),
  chosen: text(30 + rng.int(30)),
  rejected: text(30 + rng.int(30)),
}));

const decoder = await Decoder.load(ensureQwenShapeCheckpoint(), { cacheDir: process.env.ARM_CACHE_DIR, quiet: true });
const outputDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-eval-'));
const results = await evaluate(decoder, pairs, {
  methods: Object.keys(METHODS),
  fewShot: 4,
  seeds: 1,
  seed: 0,
  pool: 'global',
  outputDir,
  saveAll: false,
  chunkSize: 8,
  dataset: 'bench',
  modelId: 'qwen2.5-0.5b-shape (random)',
  method: {
    fit: { passes: 4, shots: 4, reinforce: { steps: 4 }, warn: () => undefined },
    batchSize: 8,
    maxLength: 4096,
    iclShots: 4,
    sampleN: 8,
    sampleTemperature: 1,
    savTopHeads: 20,
  },
  onProgress: (what, done, total) => process.stderr.write(`\r${what} ${done}/${total}        `),
});
process.stderr.write('\n');
await decoder.dispose();
fs.rmSync(outputDir, { recursive: true, force: true });
const out = Object.fromEntries(
  Object.entries(results.methods).map(([name, m]) => [
    name,
    {
      tokensPerPair: Math.round(m.cost.forwardTokensPerPair),
      msPerPair: Math.round(m.cost.secondsPerPair * 1000),
      prepareS: Number(m.cost.prepareSeconds.toFixed(1)),
      prepareTokens: m.cost.prepareTokens,
    },
  ]),
);
console.table(out);
console.log(JSON.stringify(out));
