/**
 * A finished fit must survive a failed save: the error names the criterion file and the cause, the same bytes go
 * to a fallback (beside it, else in the temporary folder) that the error names, and the fit checkpoint lets
 * `--resume` finish without extracting means or running REINFORCE again.
 *
 * Real ENOSPC without a full disk: the writer's temporary file `<target>.tmp-<pid>` is planted as a symbolic link to
 * /dev/full, whose writes fail with ENOSPC (root ignores permission bits, so a read-only folder would not fail here).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type Example } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { ActivationRM } from '../../src/arm/rm.js';
import {
  CriterionWriteError,
  loadCriterion,
  saveCriterion,
  unsavedCriterionFiles,
  type Criterion,
} from '../../src/arm/criterion.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const CONCISE = path.resolve(import.meta.dirname, '../../examples/concise');
const fullDisk = (target: string) => fs.symlinkSync('/dev/full', `${target}.tmp-${process.pid}`);
const tmpLeft = (dir: string) => fs.readdirSync(dir).filter((f) => f.includes('.tmp-'));
/** `text` escaped to match itself in a regular expression. */
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** One regular expression from several literals (a long pattern over several lines): their sources joined. */
const joined = (...parts: RegExp[]) => new RegExp(parts.map((p) => p.source).join(''));

let decoder: Decoder, examples: Example[], criterion: Criterion;
beforeAll(async () => {
  decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  examples = readExamples(path.join(CONCISE, 'few.jsonl')).examples.slice(0, 4);
  criterion = (
    await fitActivationRM(decoder, examples, { passes: 4, shots: 1, seed: 2, batchSize: 4, heads: 'random:3' })
  ).criterion;
});
afterAll(async () => {
  await decoder?.dispose();
});

/** The error saveCriterion throws (or null). */
function saveError(file: string, opts: Parameters<typeof saveCriterion>[2] = {}): CriterionWriteError | null {
  try {
    saveCriterion(file, criterion, opts);
    return null;
  } catch (e) {
    return e as CriterionWriteError;
  }
}

const sameCriterion = (file: string) => {
  const c = loadCriterion(file);
  expect(c.meta).toEqual({ ...criterion.meta, muLayout: 'selected' });
  expect(Array.from(c.probs)).toEqual(Array.from(criterion.probs));
  for (const [l, h] of c.meta.heads) {
    const at = (l * decoder.spec.numHeads + h) * decoder.spec.headDim;
    expect(Array.from(c.mu.subarray(at, at + decoder.spec.headDim))).toEqual(
      Array.from(criterion.mu.subarray(at, at + decoder.spec.headDim)),
    );
  }
};

describe('saveCriterion when the write fails', () => {
  it('ENOSPC: names the file and the cause, and writes the finished criterion beside it, saying where', () => {
    const dir = tempDir('arm-save-');
    const file = path.join(dir, 'c.arm.safetensors');
    fullDisk(file);
    const err = saveError(file);
    expect(err).toBeInstanceOf(CriterionWriteError);
    expect(err!.message).toBe(
      `${file}: could not write the criterion file (ENOSPC on write: no space left on device); ` +
        `the finished criterion was written to ${file}.unsaved instead: ` +
        `move it into place once the cause is fixed (mv "${file}.unsaved" "${file}"); it loads from there as it is`,
    );
    expect([err!.file, err!.code, err!.savedTo]).toEqual([file, 'ENOSPC', `${file}.unsaved`]);
    expect(fs.existsSync(file)).toBe(false);
    expect(tmpLeft(dir)).toEqual([]); // the planted temporary name is gone, /dev/full untouched
    sameCriterion(`${file}.unsaved`);
    // Moved into place, as the message says, it is the criterion: it scores against the model.
    fs.renameSync(`${file}.unsaved`, file);
    expect(() => ActivationRM.load(decoder, file)).not.toThrow();
  });

  it('a full disk beside it too: the criterion goes to the temporary folder', () => {
    const dir = tempDir('arm-save-');
    const file = path.join(dir, 'c.arm.safetensors');
    const [beside, elsewhere] = unsavedCriterionFiles(file);
    fullDisk(file);
    fullDisk(beside!);
    const err = saveError(file);
    expect(err!.message).toMatch(
      new RegExp(
        `^${literal(file)}: could not write the criterion file \\(ENOSPC on write: no space left on device\\); ` +
          `the finished criterion was written to ${literal(elsewhere!)} instead`,
      ),
    );
    expect(err!.savedTo).toBe(elsewhere);
    expect(path.dirname(elsewhere!)).not.toBe(dir);
    expect(tmpLeft(dir)).toEqual([]);
    sameCriterion(elsewhere!);
    fs.rmSync(elsewhere!);
  });

  it('nowhere to write: says so, naming every place tried, and leaves nothing behind', () => {
    const dir = tempDir('arm-save-');
    const file = path.join(dir, 'c.arm.safetensors');
    const others = unsavedCriterionFiles(file);
    fullDisk(file);
    for (const o of others) fullDisk(o);
    const err = saveError(file);
    expect(err!.message).toBe(
      `${file}: could not write the criterion file (ENOSPC on write: no space left on device); ` +
        `it could not be written elsewhere either: ${others.map((o) => `${o} (ENOSPC)`).join(', ')}`,
    );
    expect(err!.savedTo).toBeNull();
    expect(tmpLeft(dir)).toEqual([]);
    for (const o of others) expect(fs.existsSync(o) || fs.existsSync(`${o}.tmp-${process.pid}`)).toBe(false);
  });

  it('a path that cannot exist (its folder is a file): ENOTDIR named, the criterion kept in the temp folder', () => {
    const dir = tempDir('arm-save-');
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'a file, not a folder');
    const file = path.join(dir, 'notes.txt', 'c.arm.safetensors');
    const err = saveError(file);
    expect(err!.message).toMatch(
      joined(
        /notes\.txt\/c\.arm\.safetensors: could not write the criterion file \(ENOTDIR on open: not a directory\); /,
        /the finished criterion was written to .*c\.arm\.safetensors\.[0-9a-f]{12}\.unsaved instead/,
      ),
    );
    sameCriterion(err!.savedTo!);
    fs.rmSync(err!.savedTo!);
  });

  it('an injected writer failure; and with fallback: false nothing is written elsewhere', () => {
    const dir = tempDir('arm-save-');
    const file = path.join(dir, 'c.arm.safetensors');
    const enospc = () => {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
    };
    const err = saveError(file, { write: enospc, fallback: false });
    expect(err!.message).toBe(`${file}: could not write the criterion file (ENOSPC on write: no space left on device)`);
    expect(fs.readdirSync(dir)).toEqual([]);
    for (const o of unsavedCriterionFiles(file)) expect(fs.existsSync(o)).toBe(false);
  });
});

describe('the fit checkpoint after a failed save', () => {
  it('is kept, and --resume from it gives the same criterion without mean extraction or REINFORCE', async () => {
    const dir = tempDir('arm-save-');
    const file = path.join(dir, 'c.arm.safetensors');
    const checkpointFile = `${file}.fit-checkpoint.json`;
    const opts = {
      passes: 8,
      shots: 2,
      seed: 5,
      batchSize: 4,
      reinforce: { steps: 20, samples: 8, readoutMasks: 3, readoutItems: 4 },
      checkpointFile,
    };
    const runs0 = decoder.stats.runs;
    const rm = await fitActivationRM(decoder, examples, opts);
    const fitRuns = decoder.stats.runs - runs0;
    // The CLI removes the checkpoint only once the criterion is written; here the write fails.
    fullDisk(file);
    fullDisk(`${file}.unsaved`);
    expect(() => rm.save(file)).toThrow(/c\.arm\.safetensors: could not write the criterion file \(ENOSPC/);
    expect(fs.existsSync(checkpointFile)).toBe(true);
    const runs1 = decoder.stats.runs;
    const again = await fitActivationRM(decoder, examples, { ...opts, resume: true });
    const resumeRuns = decoder.stats.runs - runs1;
    expect(again.criterion.meta.heads).toEqual(rm.criterion.meta.heads);
    expect(Array.from(again.criterion.mu)).toEqual(Array.from(rm.criterion.mu));
    expect(Array.from(again.criterion.probs)).toEqual(Array.from(rm.criterion.probs));
    // Only the read-out ran again (3 masks over ≤ 4 items: a prefill and a step per item), not 8 passes and 20 steps.
    expect(resumeRuns).toBeLessThanOrEqual(2 * 4);
    expect(resumeRuns).toBeLessThan(fitRuns / 3);
    again.save(path.join(dir, 'ok.arm.safetensors'));
    expect(loadCriterion(path.join(dir, 'ok.arm.safetensors')).meta.heads).toEqual(rm.criterion.meta.heads);
  });
});

describe('a fit checkpoint that cannot be written', () => {
  it('warns naming the file and finishes the fit, with the criterion of a fit without a checkpoint', async () => {
    const dir = tempDir('arm-save-');
    // its folder does not exist: ENOENT
    const checkpointFile = path.join(dir, 'gone', 'c.arm.safetensors.fit-checkpoint.json');
    const opts = {
      passes: 4,
      shots: 1,
      seed: 3,
      batchSize: 4,
      reinforce: { steps: 12, samples: 4, readoutMasks: 2, readoutItems: 2 },
    };
    const warnings: string[] = [];
    const rm = await fitActivationRM(decoder, examples, { ...opts, checkpointFile, warn: (m) => warnings.push(m) });
    const plain = await fitActivationRM(decoder, examples, opts);
    expect(
      warnings.filter((w) => w.startsWith(`${checkpointFile}: could not write the fit checkpoint (ENOENT)`)).length,
    ).toBeGreaterThan(0);
    expect(Array.from(rm.criterion.mu)).toEqual(Array.from(plain.criterion.mu));
    expect(rm.criterion.meta.heads).toEqual(plain.criterion.meta.heads);
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
