/**
 * Images in judge prompts (image-text checkpoints). Per image file: its content hash, size and placeholder count,
 * read once (length budgets need the count before anything runs). Per distinct image: the vision tower's rows,
 * computed once and kept in a bounded cache keyed by the image's content hash, the vision config hash and the
 * checkpoint's weights, so a REINFORCE run or a scored pair set never runs the tower twice on one picture.
 * Judge ids carry one placeholder per image; `place` expands them and attaches the rows.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Decoder, ImageEmbeds } from '../model/decoder.js';
import {
  forEachLastLogits,
  forEachLastLogitsPerPatch,
  type ImageSequence,
  type LastLogitsOptions,
  type LastRow,
  type PerPatchOptions,
  type PlacedImage,
  type Sequence,
} from '../model/batch.js';
import { ImageInputs } from '../model/vision/image-inputs.js';
import { ModelError } from '../model/errors.js';
import { decodeImage } from '../model/vision/image.js';
import { loadImageProcessor, type ImageProcessor } from '../model/vision/processor.js';
import { expandImagePlaceholders } from '../model/vision/placeholders.js';
import { visionSpecFromConfig, visionSpecHash } from '../model/families/vision-config.js';
import type { ImageRendering } from './template.js';

export interface ImageFileInfo {
  sha256: string;
  height: number;
  width: number;
  tokens: number;
}

type Rows = Omit<ImageEmbeds, 'start'>;

/** Vision-tower rows by image key, least recently used first; bounded in bytes. Shared by every JudgeImages. */
const rowsCache = new Map<string, Rows>();
let rowsCacheBytes = 0;
const bytesOf = (rows: Rows) => (rows.embeds.length + (rows.deepstack ?? []).reduce((n, f) => n + f.length, 0)) * 4;
/** Default bound of the rows cache: 1 GiB (ARM_IMAGE_CACHE_MB to change it). */
const rowsCacheLimit = () => Number(process.env.ARM_IMAGE_CACHE_MB ?? 1024) * 2 ** 20;

const perDecoder = new WeakMap<Decoder, JudgeImages>();

/**
 * sha256 over what decides an image's rows besides its pixels and the weights: the vision tower's spec (from
 * config.json) and the image processor's settings (preprocessor_config.json). Criterion files record it.
 */
export function visionConfigHash(modelDir: string): string {
  const config = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const pre = fs.readFileSync(path.join(modelDir, 'preprocessor_config.json'), 'utf8');
  return createHash('sha256')
    .update(visionSpecHash(visionSpecFromConfig(config)))
    .update('\0')
    .update(pre)
    .digest('hex');
}

export class JudgeImages implements ImageRendering {
  /** Tower runs and cache hits, for tests and cost reports. */
  readonly stats = { towerRuns: 0, cacheHits: 0 };
  private readonly files = new Map<string, ImageFileInfo & { stamp: string }>();
  private inputs: Promise<ImageInputs> | null = null;
  private markupText: string | null = null;

  private constructor(
    private readonly decoder: Decoder,
    readonly processor: ImageProcessor,
    readonly visionConfigHash: string,
  ) {}

  /** The decoder's image handling, made once per decoder; null for a text-only checkpoint. */
  static of(decoder: Decoder): JudgeImages | null {
    if (!decoder.spec.imageText) return null;
    let j = perDecoder.get(decoder);
    if (!j) {
      const dir = decoder.info.modelDir;
      j = new JudgeImages(decoder, loadImageProcessor(dir), visionConfigHash(dir));
      perDecoder.set(decoder, j);
    }
    return j;
  }

  /**
   * The text one image placeholder is written as in a prompt: the checkpoint's own tokens (Qwen
   * `<|vision_start|><|image_pad|><|vision_end|>`, LLaVA `<image>` and a newline, as their processors' prompts have
   * it).
   */
  get markup(): string {
    if (this.markupText === null) {
      const p = this.processor.placeholders;
      const token = (id: number) => this.decoder.tokenizer.decode([id], { skipSpecialTokens: false });
      const image = token(p.image);
      this.markupText =
        p.visionStart !== undefined && p.visionEnd !== undefined
          ? `${token(p.visionStart)}${image}${token(p.visionEnd)}`
          : `${image}\n`;
    }
    return this.markupText;
  }

  /** The placeholder token's text (what a chat template that renders image parts must emit). */
  get placeholderText(): string {
    return this.decoder.tokenizer.decode([this.processor.placeholders.image], { skipSpecialTokens: false });
  }

  /**
   * Reads each file not seen yet (or changed since: size and mtime): content hash, size, token count. Errors name the
   * file.
   */
  async load(files: Iterable<string>): Promise<void> {
    for (const file of files) {
      let stamp = '';
      try {
        const st = fs.statSync(file);
        stamp = `${st.size}:${st.mtimeMs}`;
      } catch {
        stamp = '';
      }
      if (stamp && this.files.get(file)?.stamp === stamp) continue;
      let bytes: Buffer;
      try {
        bytes = fs.readFileSync(file);
      } catch (e) {
        throw new ModelError(
          `${file}: cannot read the image (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
        );
      }
      // Bounded by what the processor can use, checked from the header before any pixel is decoded.
      const img = await decodeImage(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), {
        name: file,
        maxPixels: this.processor.pixelBound(),
      });
      this.files.set(file, {
        stamp,
        sha256: createHash('sha256').update(bytes).digest('hex'),
        height: img.height,
        width: img.width,
        tokens: this.processor.tokenCount(img.height, img.width),
      });
    }
  }

  info(file: string): ImageFileInfo {
    const i = this.files.get(file);
    if (!i) throw new Error(`image ${file} was not loaded (JudgeImages.load first)`);
    return i;
  }

  /** Placeholder tokens `file` expands to. */
  tokens(file: string): number {
    return this.info(file).tokens;
  }

  /** The vision tower's rows for one image, from the cache or computed (the tower runs once per distinct image). */
  async rows(file: string): Promise<{ key: string; rows: Rows }> {
    const { sha256 } = this.info(file);
    const key = `${sha256}|${this.visionConfigHash}|${this.decoder.info.weightsFingerprint}`;
    const hit = rowsCache.get(key);
    if (hit) {
      rowsCache.delete(key);
      rowsCache.set(key, hit);
      this.stats.cacheHits++;
      return { key: sha256, rows: hit };
    }
    // The tower lives in the decoder's cache and uses its threads and device; a failed load is retried next time (a
    // server must not keep a transient failure for good).
    this.inputs ??= ImageInputs.load(this.decoder.info.modelDir, {
      cacheDir: this.decoder.info.cacheDir,
      threads: this.decoder.info.threads,
      device: this.decoder.info.device,
    }).catch((e: unknown) => {
      this.inputs = null;
      throw e;
    });
    const inputs = await this.inputs;
    // Decode the very bytes whose hash keys the cache: a file rewritten since `load` must not file its new
    // pixels under the old content hash (a resumed fit or the server would then read the wrong rows).
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch (e) {
      throw new ModelError(
        `${file}: cannot read the image (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      );
    }
    if (createHash('sha256').update(bytes).digest('hex') !== sha256) {
      throw new ModelError(
        `${file}: the image changed while it was in use (its content no longer matches what was read ` +
          'before); run again',
      );
    }
    const rows = await inputs.embed(
      this.processor.preprocess(
        await decodeImage(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), {
          name: file,
          maxPixels: this.processor.pixelBound(),
        }),
      ),
    );
    this.stats.towerRuns++;
    rowsCache.set(key, rows);
    rowsCacheBytes += bytesOf(rows);
    for (const [k, v] of rowsCache) {
      if (rowsCacheBytes <= rowsCacheLimit() || k === key) break;
      rowsCache.delete(k);
      rowsCacheBytes -= bytesOf(v);
    }
    return { key: sha256, rows };
  }

  /** `ids` with one placeholder per file (in order) → the expanded ids alone (lengths, without running the tower). */
  async expandedIds(ids: readonly number[], files: readonly string[]): Promise<number[]> {
    await this.load(files);
    return expandImagePlaceholders(
      ids,
      this.processor.placeholders.image,
      files.map((f) => this.tokens(f)),
    ).inputIds;
  }

  /** `ids` with one placeholder per file (in order) → expanded ids with each image's rows placed. */
  async place(ids: readonly number[], files: readonly string[]): Promise<ImageSequence> {
    await this.load(files);
    const expanded = expandImagePlaceholders(
      ids,
      this.processor.placeholders.image,
      files.map((f) => this.tokens(f)),
    );
    const images: PlacedImage[] = [];
    for (const [i, f] of files.entries()) {
      const { key, rows } = await this.rows(f);
      images.push({ start: expanded.imageSpans[i]!.start, key, ...rows });
    }
    return { ids: expanded.inputIds, images };
  }

  async release(): Promise<void> {
    const inputs = this.inputs;
    this.inputs = null;
    if (inputs) await (await inputs).release();
  }
}

/** Every image file the items show. */
export function imageFilesOf(items: readonly { images?: readonly string[] }[]): Set<string> {
  return new Set(items.flatMap((it) => it.images ?? []));
}

/**
 * The image handling for judge items on `decoder`: null when no item has an image; the files loaded (sizes,
 * hashes) when some do; an error when the checkpoint has no vision tower.
 */
export async function judgeImagesFor(
  decoder: Decoder,
  items: readonly { id: string; images?: readonly string[] }[],
): Promise<JudgeImages | null> {
  const withImage = items.find((it) => it.images?.length);
  if (!withImage) return null;
  const images = JudgeImages.of(decoder);
  if (!images)
    throw new ModelError(
      `item ${withImage.id} has an image, but ${decoder.id} is a text-only checkpoint (image rows need ` +
        'an image-text model: qwen2_vl, qwen2_5_vl, qwen3_vl, llava_onevision)',
    );
  await images.load(imageFilesOf(items));
  return images;
}

/** A rendered prompt as the batch runner takes it: its ids, or with images its expanded ids and rows. */
export async function toSequence(
  images: JudgeImages | null,
  prompt: { ids: number[]; images: readonly string[] },
): Promise<Sequence> {
  if (!prompt.images.length) return prompt.ids;
  if (!images) throw new ModelError('a prompt has images, but no image handling was set up for it');
  return images.place(prompt.ids, prompt.images);
}

/** Items placed at a time when prompts carry images (their rows are held until the chunk has run). */
const IMAGE_CHUNK_ITEMS = 64;

type Rendered = readonly { ids: number[]; images: readonly string[] }[];

/**
 * One run over a chunk: its sequences, its groups in chunk indices, the rendered index of chunk index k, and
 * progress in chunk items (counted on from the chunks before it).
 */
type ChunkRun = (
  seqs: Sequence[],
  groups: number[][] | undefined,
  at: (k: number) => number,
  onProgress: (done: number) => void,
) => Promise<void>;

/**
 * `run` over rendered prompts as sequences. Text prompts run as one call; prompts with images run in chunks of
 * about `chunkItems` items (a group never split), each chunk's images placed just before it runs, so scoring a
 * large image set holds a chunk's vision rows, not every image's at once.
 */
async function inSequenceChunks(
  images: JudgeImages | null,
  rendered: Rendered,
  opts: { groups?: number[][]; onProgress?: (done: number, total: number) => void },
  run: ChunkRun,
  chunkItems: number,
): Promise<void> {
  const { groups } = opts;
  let before = 0;
  const runChunk = async (seqs: Sequence[], chunkGroups: number[][] | undefined, at: (k: number) => number) => {
    await run(seqs, chunkGroups, at, (done) => opts.onProgress?.(before + done, rendered.length));
    before += seqs.length;
  };
  if (!images || rendered.every((prompt) => !prompt.images.length)) {
    await runChunk(
      rendered.map((prompt) => prompt.ids),
      groups,
      (k) => k,
    );
    return;
  }
  const groupOf = new Map<number, number[]>();
  for (const g of groups ?? []) for (const i of g) groupOf.set(i, g);
  const chunks: number[][] = [];
  let chunk: number[] = [];
  const taken = new Set<number>();
  for (let i = 0; i < rendered.length; i++) {
    if (taken.has(i)) continue;
    const members = groupOf.get(i) ?? [i];
    members.forEach((m) => taken.add(m));
    chunk.push(...members);
    if (chunk.length >= chunkItems) {
      chunks.push(chunk);
      chunk = [];
    }
  }
  if (chunk.length) chunks.push(chunk);
  for (const c of chunks) {
    const local = new Map(c.map((i, k) => [i, k]));
    const seqs: Sequence[] = [];
    for (const i of c) seqs.push(await toSequence(images, rendered[i]!));
    const chunkGroups = groups?.filter((g) => g.length && local.has(g[0]!)).map((g) => g.map((i) => local.get(i)!));
    await runChunk(seqs, chunkGroups, (k) => c[k]!);
  }
}

/** forEachLastLogits over rendered prompts (images placed chunk by chunk: inSequenceChunks). */
export async function forEachRenderedLastLogits(
  decoder: Decoder,
  images: JudgeImages | null,
  rendered: Rendered,
  opts: LastLogitsOptions,
  onRow: (index: number, row: LastRow) => void,
  chunkItems = IMAGE_CHUNK_ITEMS,
): Promise<void> {
  const run: ChunkRun = (seqs, groups, at, onProgress) =>
    forEachLastLogits(decoder, seqs, { ...opts, groups, onProgress }, (k, row) => onRow(at(k), row));
  await inSequenceChunks(images, rendered, opts, run, chunkItems);
}

/** forEachLastLogitsPerPatch over rendered prompts: each prompt's last token under K patch rows. */
export async function forEachRenderedPerPatch(
  decoder: Decoder,
  images: JudgeImages | null,
  rendered: Rendered,
  opts: PerPatchOptions,
  onRows: (index: number, rows: { logits: Float32Array; logSumExp: Float32Array }) => void,
): Promise<void> {
  const run: ChunkRun = (seqs, groups, at, onProgress) =>
    forEachLastLogitsPerPatch(decoder, seqs, { ...opts, groups, onProgress }, (k, rows) => onRows(at(k), rows));
  await inSequenceChunks(images, rendered, opts, run, IMAGE_CHUNK_ITEMS);
}

/** Empties the rows cache shared by every decoder (tests count tower runs from a clean state). */
export function clearImageRowsCache(): void {
  rowsCache.clear();
  rowsCacheBytes = 0;
}

/** Releases the vision tower a decoder's JudgeImages loaded (the CLI calls it before disposing the decoder). */
export async function releaseJudgeImages(decoder: Decoder): Promise<void> {
  await perDecoder.get(decoder)?.release();
}

/** Disposes a decoder and the vision tower its judged images loaded, if any (absent decoders are fine). */
export async function disposeDecoder(decoder: Decoder | null | undefined): Promise<void> {
  if (!decoder) return;
  await releaseJudgeImages(decoder);
  await decoder.dispose();
}
