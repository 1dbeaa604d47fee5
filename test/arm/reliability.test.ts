// Fit and score reliability: batch-size independent means, interruptible and resumable mean extraction,
// byte-reproducible files, NaN never written, criterion metadata validated on load.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Decoder } from '../../src/model/decoder.js';
import { writeSafetensors } from '../../src/model/checkpoint/safetensors.js';
import { readExamples, type Example } from '../../src/data/examples.js';
import { extractMeans } from '../../src/arm/means.js';
import { fitActivationRM, FitError, FitInterrupted, judgeItems } from '../../src/arm/fit.js';
import { ActivationRM } from '../../src/arm/rm.js';
import { makeTemplate, render } from '../../src/arm/template.js';
import {
  FORMAT_VERSION,
  loadCriterion,
  saveCriterion,
  type Criterion,
  type CriterionMeta,
} from '../../src/arm/criterion.js';
import { CHATML, FAMILY_CONFIGS, makeCheckpoint, STORIES, tempDir } from '../helpers/fixtures.js';

const CONCISE = path.resolve(import.meta.dirname, '../../examples/concise');
const quick = {
  passes: 6,
  shots: 2,
  seed: 3,
  batchSize: 4,
  reinforce: { steps: 6, samples: 8, readoutMasks: 3, readoutItems: 4 },
};

let tiny: Decoder, stories: Decoder, examples: Example[], few: Example[];

beforeAll(async () => {
  const { dir } = makeCheckpoint(
    { ...FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!, max_position_embeddings: 512 },
    { seed: 21, chatTemplate: CHATML, std: 0.3 },
  );
  tiny = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  stories = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  few = readExamples(path.join(CONCISE, 'few.jsonl')).examples;
  examples = few.slice(0, 6);
});
afterAll(async () => {
  await tiny?.dispose();
  await stories?.dispose();
});

/** The decoder with some methods' results replaced: NaN from a chosen place, whatever the engine checks. */
function tampered(
  decoder: Decoder,
  overrides: Partial<
    Record<
      'forward' | 'forwardShared' | 'stepShared',
      (r: { logits: Float32Array; logSumExp: Float32Array; heads?: Float32Array }) => void
    >
  >,
): Decoder {
  return new Proxy(decoder, {
    get(target, key) {
      const value = Reflect.get(target, key, target);
      if (typeof value !== 'function') return value;
      const edit = overrides[key as keyof typeof overrides];
      if (!edit) return value.bind(target);
      return async (...args: unknown[]) => {
        const r = await value.apply(target, args);
        edit(r);
        return r;
      };
    },
  });
}
const nanLogits = (r: { logits: Float32Array; logSumExp: Float32Array }) => {
  r.logits.fill(NaN);
  r.logSumExp.fill(NaN);
};

describe('mean extraction', () => {
  it('gives the same bits whatever the batch size (no padded rows)', async () => {
    // The concise passes differ in length: batched with padding, the means differed in the last bits.
    const template = makeTemplate('scalar', {}, stories.tokenizer);
    const items = judgeItems(few, 'scalar');
    const at = (batchSize: number) =>
      extractMeans(stories, template, items, { passes: 16, shots: 4, seed: 0, batchSize, maxLength: 512 });
    const [one, five, eight] = [await at(1), await at(5), await at(8)];
    const lengths = one.plan.map(
      (p) =>
        render(
          stories.tokenizer,
          template,
          p.demos.map((i) => items[i]!),
          items[p.query]!,
          512,
        ).ids.length,
    );
    expect(new Set(lengths).size).toBeGreaterThan(4);
    expect(Array.from(five.mu)).toEqual(Array.from(one.mu));
    expect(Array.from(eight.mu)).toEqual(Array.from(one.mu));
  });

  it('stops after the current batch when asked, and --resume finishes it to the same bits', async () => {
    const opts = { passes: 24, shots: 4, seed: 2, batchSize: 2, heads: 'random:3' as const };
    const whole = await fitActivationRM(stories, few, opts);
    const checkpointFile = path.join(tempDir(), 'c.fit-checkpoint.json');
    let meanBatches = 0;
    const stopped = fitActivationRM(stories, few, {
      ...opts,
      checkpointFile,
      onProgress: (phase) => {
        if (phase === 'means') meanBatches++;
      },
      shouldStop: () => meanBatches >= 3,
    });
    await expect(stopped).rejects.toBeInstanceOf(FitInterrupted);
    expect(meanBatches).toBe(3); // stopped after the third batch, not at the end of the phase
    const saved = JSON.parse(fs.readFileSync(checkpointFile, 'utf8'));
    expect(saved.mu).toBe('');
    expect(saved.meansDone.passes.length).toBeGreaterThan(0);
    expect(saved.meansDone.passes.length).toBeLessThan(24);

    const runs0 = stories.stats.runs;
    const resumed = await fitActivationRM(stories, few, { ...opts, checkpointFile, resume: true });
    const resumedRuns = stories.stats.runs - runs0;
    const runs1 = stories.stats.runs;
    await fitActivationRM(stories, few, opts);
    expect(resumedRuns).toBeLessThan(stories.stats.runs - runs1); // the saved passes were not run again
    expect(Array.from(resumed.criterion.mu)).toEqual(Array.from(whole.criterion.mu));
    expect(resumed.criterion.meta.heads).toEqual(whole.criterion.meta.heads);
  });
});

describe('reproducible files', () => {
  it('SOURCE_DATE_EPOCH: two fits write byte-identical files dated then', async () => {
    const before = process.env.SOURCE_DATE_EPOCH;
    process.env.SOURCE_DATE_EPOCH = '1700000000';
    try {
      const dir = tempDir();
      const sha = async (name: string) => {
        const file = path.join(dir, name);
        (await fitActivationRM(tiny, examples, quick)).save(file);
        await new Promise((r) => setTimeout(r, 5)); // a later clock, should anything read it
        return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
      };
      expect(await sha('a.arm.safetensors')).toBe(await sha('b.arm.safetensors'));
      const meta = loadCriterion(path.join(dir, 'a.arm.safetensors')).meta;
      expect(meta.fit.createdAt).toBe('2023-11-14T22:13:20.000Z');
      expect(meta.fit.seconds).toBe(0);
      process.env.SOURCE_DATE_EPOCH = 'yesterday';
      await expect(fitActivationRM(tiny, examples, quick)).rejects.toThrow(
        /SOURCE_DATE_EPOCH="yesterday": expected whole seconds/,
      );
    } finally {
      if (before === undefined) delete process.env.SOURCE_DATE_EPOCH;
      else process.env.SOURCE_DATE_EPOCH = before;
    }
  });
});

describe('non-finite numbers', () => {
  it('NaN REINFORCE losses fail the fit with the likely cause, and leave no checkpoint or temporary file', async () => {
    const dir = tempDir();
    const checkpointFile = path.join(dir, 'c.fit-checkpoint.json');
    const broken = tampered(tiny, { stepShared: nanLogits });
    await expect(fitActivationRM(broken, examples, { ...quick, checkpointFile })).rejects.toThrow(
      /REINFORCE loss of item .* is not finite .*NaN\/Inf in the model's weights.*rms_norm_eps/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('NaN activations fail the fit before head selection', async () => {
    const broken = tampered(tiny, { forward: (r) => r.heads!.fill(NaN) });
    await expect(fitActivationRM(broken, examples, quick)).rejects.toThrow(
      /mean activation of layer 0, head 0 is not finite/,
    );
  });

  it('a failed resumed fit keeps the checkpoint it resumed from', async () => {
    const checkpointFile = path.join(tempDir(), 'c.fit-checkpoint.json');
    let phase = '';
    await expect(
      fitActivationRM(tiny, examples, {
        ...quick,
        checkpointFile,
        onProgress: (p) => {
          phase = p;
        },
        shouldStop: () => phase === 'reinforce',
      }),
    ).rejects.toBeInstanceOf(FitInterrupted);
    const broken = tampered(tiny, { stepShared: nanLogits });
    await expect(fitActivationRM(broken, examples, { ...quick, checkpointFile, resume: true })).rejects.toBeInstanceOf(
      FitError,
    );
    expect(fs.existsSync(checkpointFile)).toBe(true);
    expect(fs.readdirSync(path.dirname(checkpointFile))).toEqual(['c.fit-checkpoint.json']);
  });

  it('a non-finite score is an error, not a NaN reward', async () => {
    const rm = await fitActivationRM(tiny, examples, { ...quick, heads: 'random:2' });
    const broken = new ActivationRM(tampered(tiny, { forward: nanLogits, forwardShared: nanLogits }), rm.criterion);
    await expect(broken.scoreExamples(examples)).rejects.toThrow(/score of item .* is not finite .*rms_norm_eps/);
  });
});

describe('criterion files', () => {
  let good: Criterion;
  let dir: string;
  beforeAll(async () => {
    good = (await fitActivationRM(tiny, examples, quick)).criterion;
    dir = tempDir();
  });

  /** Writes a criterion file as another program might: metadata and tensors as given, unchecked. */
  function writeRaw(
    name: string,
    meta: unknown,
    edit: { mu?: (mu: Float32Array) => void; probs?: (p: Float32Array) => void } = {},
  ): string {
    const file = path.join(dir, name);
    const { numHeads: H, headDim: d } = good.meta.model;
    const mu = new Float32Array(good.meta.heads.length * d);
    good.meta.heads.forEach(([l, h], i) => mu.set(good.mu.subarray((l * H + h) * d, (l * H + h + 1) * d), i * d));
    const probs = good.probs.slice();
    edit.mu?.(mu);
    edit.probs?.(probs);
    const bytes = (x: Float32Array) => new Uint8Array(x.buffer);
    writeSafetensors(
      file,
      [
        { name: 'mu', dtype: 'F32', shape: [good.meta.heads.length, d], bytes: bytes(mu) },
        { name: 'probs', dtype: 'F32', shape: [good.meta.model.numLayers, H], bytes: bytes(probs) },
      ],
      { arm: JSON.stringify(meta) },
    );
    return file;
  }
  const withMeta = (patch: (m: CriterionMeta) => void) => {
    const m = structuredClone({ ...good.meta, muLayout: 'selected' }) as CriterionMeta;
    patch(m);
    return m;
  };

  it('is format version 2, and a version 1 file is refused with a clear message (refit)', () => {
    expect(FORMAT_VERSION).toBe(2);
    const file = writeRaw(
      'v1.arm.safetensors',
      withMeta((m) => {
        m.formatVersion = 1;
      }),
    );
    expect(() => ActivationRM.load(tiny, file)).toThrow(
      /v1\.arm\.safetensors: metadata field "formatVersion": 1 is an older format .*fit the criterion again/,
    );
    expect(loadCriterion(file, { anyVersion: true }).meta.formatVersion).toBe(1); // inspect still reads it
  });

  it('answer ids outside the vocabulary are refused on load, naming the file and the field', () => {
    const file = writeRaw(
      'x.arm.safetensors',
      withMeta((m) => {
        m.answerTokens.primary[0] = 99999;
      }),
    );
    expect(() => ActivationRM.load(tiny, file)).toThrow(
      'x.arm.safetensors: metadata field "answerTokens.primary[0]": 99999 is outside the vocabulary (0..511)',
    );
    const variant = writeRaw(
      'v.arm.safetensors',
      withMeta((m) => {
        m.answerTokens.variants[1].push(512);
      }),
    );
    expect(() => ActivationRM.load(tiny, variant)).toThrow(
      /v\.arm\.safetensors: metadata field "answerTokens\.variants\[1\]\[\d+\]": 512 is outside the vocabulary/,
    );
  });

  it.each([
    [
      'mode',
      (m: CriterionMeta) => {
        (m as { mode: string }).mode = 'multiply';
      },
      /metadata field "mode": "multiply" is not one of "replace", "add"/,
    ],
    [
      'template kind',
      (m: CriterionMeta) => {
        (m.template as { kind: string }).kind = 'pairwise';
      },
      /metadata field "template\.kind": "pairwise" is not one of "scalar", "ranked"/,
    ],
    [
      'head out of range',
      (m: CriterionMeta) => {
        m.heads[0] = [99, 0];
      },
      /metadata field "heads\[0\]\[0\]": 99 is not an integer in 0\.\.1/,
    ],
    [
      'fractional head',
      (m: CriterionMeta) => {
        m.heads[0] = [0, 1.5];
      },
      /metadata field "heads\[0\]\[1\]": 1\.5 is not an integer/,
    ],
    [
      'duplicate head',
      (m: CriterionMeta) => {
        m.heads[1] = [...m.heads[0]!];
      },
      /metadata field "heads\[1\]": \[\d,\d\] is listed twice/,
    ],
    [
      'NaN read-out loss (JSON null)',
      (m: CriterionMeta) => {
        m.readout!.meanLoss = NaN;
      },
      /metadata field "readout\.meanLoss": null is not a finite number/,
    ],
    [
      'NaN fit time (JSON null)',
      (m: CriterionMeta) => {
        m.fit.seconds = NaN;
      },
      /metadata field "fit\.seconds": null is not a finite number/,
    ],
    [
      'negative answer id',
      (m: CriterionMeta) => {
        m.answerTokens.primary[1] = -1;
      },
      /metadata field "answerTokens\.primary\[1\]": -1 is not an integer ≥ 0/,
    ],
    [
      'missing field',
      (m: CriterionMeta) => {
        delete (m as Partial<CriterionMeta>).hyper;
      },
      /metadata field "hyper" is missing/,
    ],
  ])('refuses bad metadata: %s', (name, patch, message) => {
    const file = writeRaw(`${name.replace(/\W+/g, '-')}.arm.safetensors`, withMeta(patch));
    expect(() => loadCriterion(file)).toThrow(
      new RegExp(`${path.basename(file).replace(/\./g, '\\.')}: .*${message.source}`),
    );
  });

  it('refuses non-finite means and probabilities outside [0, 1]', () => {
    const nanMu = writeRaw(
      'nan-mu.arm.safetensors',
      withMeta(() => {}),
      {
        mu: (mu) => {
          mu[1] = NaN;
        },
      },
    );
    expect(() => loadCriterion(nanMu)).toThrow(
      /nan-mu\.arm\.safetensors: tensor "mu" of layer \d+, head \d+: NaN is not finite/,
    );
    const badP = writeRaw(
      'p.arm.safetensors',
      withMeta(() => {}),
      {
        probs: (p) => {
          p[5] = 1.5;
        },
      },
    );
    expect(() => loadCriterion(badP)).toThrow(
      /p\.arm\.safetensors: tensor "probs"\[1\]\[1\]: 1\.5 is not a probability/,
    );
  });

  it('a criterion with NaN in it is never written', () => {
    const file = path.join(dir, 'never.arm.safetensors');
    const bad: Criterion = { ...good, meta: { ...good.meta, readout: { meanLoss: NaN, candidates: [NaN] } } };
    expect(() => saveCriterion(file, bad)).toThrow(
      /never\.arm\.safetensors: not written: metadata field "readout\.meanLoss": null is not a finite number/,
    );
    expect(fs.existsSync(file)).toBe(false);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
});
