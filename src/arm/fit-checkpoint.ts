/**
 * The fit's checkpoint: what `--resume` continues from (the finished mean-extraction passes, then the means, then
 * the REINFORCE state every 10 steps), the key that says whether a checkpoint belongs to this fit, and the file's
 * life. It is written through a temporary file; a write that fails only warns (the fit goes on, it just cannot be
 * resumed from that point); a fit that fails with an error removes the checkpoint it wrote, unless it resumed from
 * that file: a checkpoint is for continuing an interrupted fit, and one from a failed run would only fail again.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import { FitError, FitInterrupted } from './fit-errors.js';
import type { FitSettings } from './fit-options.js';
import { imageFilesOf, type JudgeImages } from './images.js';
import type { MeansInterrupted } from './means.js';
import type { ReinforceOptions, ReinforceState } from './reinforce.js';
import type { JudgeItem, TemplateSpec } from './template.js';

/**
 * What `--resume` continues from. While mean extraction runs, `meansDone` holds the passes finished so far
 * (their activations, [n, L·H·d] float32 as base64) and `mu` is empty; once it is done, `mu` holds the means.
 */
export interface Checkpoint {
  key: string;
  mu: string;
  meanPasses: number;
  truncatedPasses: number;
  state: ReinforceState | null;
  passes?: string[];
  meansDone?: { passes: number[]; activations: string };
}

/**
 * Part of the checkpoint key: a checkpoint laid out by another build is not resumed. 3: pass plans never show
 * a query its own group (a checkpoint's finished passes follow the older plan).
 */
const CHECKPOINT_LAYOUT = 3;

/** Everything that decides a fit's numbers; a checkpoint resumes only under the same. */
export interface CheckpointIdentity {
  settings: FitSettings;
  reinforce: ReinforceOptions;
  template: TemplateSpec;
  examplesSha256: string;
  decoder: Decoder;
  /** Every judge item (their images' content joins the key) and the decoder's image handling, if any. */
  allItems: JudgeItem[];
  images: JudgeImages | null;
}

/** The checkpoint key: sha256 over the fit's identity. Field names and order are the key: keep them. */
export function checkpointKey(id: CheckpointIdentity): string {
  const { decoder, images } = id;
  // Means taken at another dtype are other numbers: the weight format joins the key (left out at fp32, so
  // checkpoints written before int8/int4 existed still resume).
  const format = decoder.info.weightFormat;
  const quantized = format.dtype !== 'fp32' || format.prequant ? { weightFormat: format } : {};
  // Image rows: the images' content joins the key (the examples name only their paths).
  const imageHashes = images ? { images: [...imageFilesOf(id.allItems)].map((f) => images.info(f).sha256) } : {};
  // The tokenizer and processor files decide the prompts' ids and pixels: a resume after editing them starts over.
  const promptFiles = decoder.info.promptFiles;
  return createHash('sha256')
    .update(
      JSON.stringify({
        o: id.settings,
        rOpts: id.reinforce,
        template: id.template,
        examplesHash: id.examplesSha256,
        model: decoder.info.weightsFingerprint,
        promptFiles,
        ...quantized,
        ...imageHashes,
        layout: CHECKPOINT_LAYOUT,
      }),
    )
    .digest('hex');
}

/** A fit's checkpoint file (or none): what it resumed from, saving, and cleaning up after a failed fit. */
export class FitCheckpoint {
  private wrote = false;
  private readonly tmpFile: string;

  private constructor(
    readonly file: string | undefined,
    /** The checkpoint this fit continues from (`resume` and a matching file), else null. */
    readonly resumed: Checkpoint | null,
    private readonly warn: (message: string) => void,
  ) {
    this.tmpFile = file ? `${file}.tmp-${process.pid}` : '';
  }

  /** With `resume`, reads an existing `file` and refuses one that is unreadable or made for another fit. */
  static open(
    file: string | undefined,
    opts: { resume?: boolean; key: string; warn: (message: string) => void },
  ): FitCheckpoint {
    if (!(opts.resume && file && fs.existsSync(file))) return new FitCheckpoint(file, null, opts.warn);
    let resumed: Checkpoint;
    try {
      resumed = JSON.parse(fs.readFileSync(file, 'utf8')) as Checkpoint;
    } catch (e) {
      throw new FitError(
        `${file}: not a readable fit checkpoint (${(e as Error).message}); remove it or drop --resume`,
      );
    }
    if (resumed.key !== opts.key)
      throw new FitError(
        `${file}: this checkpoint was made with other examples, options, model or build; ` +
          'remove it or drop --resume',
      );
    return new FitCheckpoint(file, resumed, opts.warn);
  }

  /**
   * Writes `c` (through a temporary file renamed into place); true when it was written. A checkpoint that cannot
   * be written (disk full, folder gone) costs the ability to resume, not the fit: a warning says so.
   */
  save(c: Checkpoint): boolean {
    if (!this.file) return false;
    try {
      fs.writeFileSync(this.tmpFile, JSON.stringify(c));
      fs.renameSync(this.tmpFile, this.file);
    } catch (e) {
      fs.rmSync(this.tmpFile, { force: true });
      this.warn(
        `${this.file}: could not write the fit checkpoint ` +
          `(${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); ` +
          'the fit goes on, but cannot be resumed from this point',
      );
      return false;
    }
    this.wrote = true;
    return true;
  }

  /** Saves `c` and returns the error to stop the fit with, saying whether (and where) the progress was saved. */
  interrupted(c: Checkpoint): FitInterrupted {
    const saved = this.save(c);
    return new FitInterrupted(
      saved
        ? `interrupted; progress saved to ${this.file} (continue with --resume)`
        : `interrupted${this.file ? `; the progress could not be saved to ${this.file}` : ''}`,
    );
  }

  /**
   * After the fit failed with `error`: an interruption keeps its checkpoint; any other error removes a temporary
   * file left behind, and the checkpoint this fit wrote unless it resumed from it.
   */
  cleanUpAfter(error: unknown): void {
    if (!this.file || error instanceof FitInterrupted) return;
    fs.rmSync(this.tmpFile, { force: true });
    if (this.wrote && !this.resumed) fs.rmSync(this.file, { force: true });
  }
}

/** The checkpoint of an interrupted mean extraction: the passes done so far, each [L·H·d] (`width` values). */
export function meansInProgress(key: string, stopped: MeansInterrupted, width: number): Checkpoint {
  const { done, total } = stopped;
  const indices = [...done.keys()].sort((a, b) => a - b);
  const activations = new Float32Array(indices.length * width); // [n, L·H·d]
  indices.forEach((p, j) => activations.set(done.get(p)!, j * width));
  return {
    key,
    mu: '',
    meanPasses: total,
    truncatedPasses: 0,
    state: null,
    meansDone: { passes: indices, activations: encodeF32(activations) },
  };
}

/** The mean-extraction passes a resumed checkpoint had finished (pass index → [L·H·d], `width` = L·H·d each). */
export function finishedPasses(c: Checkpoint | null, width: number): Map<number, Float32Array> {
  const done = new Map<number, Float32Array>();
  if (c?.meansDone) {
    const activations = decodeF32(c.meansDone.activations);
    c.meansDone.passes.forEach((p, j) => done.set(p, activations.slice(j * width, (j + 1) * width)));
  }
  return done;
}

export const encodeF32 = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64');

export const decodeF32 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  const out = new Float32Array(b.length / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
};
