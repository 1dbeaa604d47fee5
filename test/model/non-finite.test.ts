/**
 * NaN and Inf never pass silently: a forward whose logits are not finite is an error naming the model and the likely
 * cause.
 */
import { expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { DATA_FILE } from '../../src/model/cache/decoder-cache.js';
import { Decoder } from '../../src/model/decoder.js';
import { ModelError } from '../../src/model/errors.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';

const config = FAMILY_CONFIGS['llama (GQA 2, tied)']!;

it(
  'NaN reaching the graph (here: a damaged cache entry) gives an error ' + 'naming the likely cause, not NaN scores',
  async () => {
    const { dir } = makeCheckpoint(config, { seed: 5 });
    const cacheDir = tempDir('arm-cache-');
    const first = await Decoder.load(dir, { cacheDir, threads: 1 });
    const entry = first.info.cacheEntry;
    await first.dispose();
    // Every float of the cached weights becomes NaN (same size, so the entry is still used as is).
    const weights = path.join(entry, DATA_FILE);
    const nan = new Float32Array(fs.statSync(weights).size / 4).fill(NaN);
    fs.writeFileSync(weights, new Uint8Array(nan.buffer));
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    try {
      expect(decoder.info.built).toBe(false);
      const err = await decoder.forward([[1, 300, 301, 302]]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ModelError);
      expect((err as Error).message).toMatch(
        new RegExp(
          `${dir}: the model produced non-finite logits \\(row 0 of 1, 4 tokens\\); likely NaN/Inf in the weights ` +
            `or a bad number in config\\.json`,
        ),
      );
    } finally {
      await decoder.dispose();
    }
  },
);

it('a patch with a NaN value is refused before it runs, naming the head', async () => {
  const { dir } = makeCheckpoint(config, { seed: 5 });
  const decoder = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  try {
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    const values = new Float32Array(L * H * d);
    values[(1 * H + 2) * d + 3] = NaN;
    const mask = new Float32Array(L * H).fill(1);
    await expect(decoder.forward([[1, 300, 301]], { mask, values })).rejects.toThrow(
      /patch\.values holds a non-finite number at layer 1, head 2/,
    );
    // The same model runs fine unpatched: the check is about the patch.
    const ok = await decoder.forward([[1, 300, 301]]);
    expect(Number.isFinite(ok.logSumExp[0]!)).toBe(true);
  } finally {
    await decoder.dispose();
  }
});
