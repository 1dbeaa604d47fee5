/**
 * Decoder: a loaded checkpoint you can run. Wraps one onnxruntime session over the graph of
 * graph/decoder-graph.ts and keeps the KV cache in JS (one shared prefix at a time), which is what lets one
 * graph serve full forwards, prefill, shared-prefix patch steps and greedy generation.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import * as ort from 'onnxruntime-node';
import { ModelError } from './errors.js';
import {
  cachedModelExists,
  cacheKey,
  DATA_FILE,
  FP32_FORMAT,
  defaultCacheDir,
  ensureCachedModel,
  LAYOUT_FILE,
  MODEL_FILE,
  validateCheckpoint,
  type BuildProgress,
  type GptqCalibration,
  type Layout,
  type WeightFormat,
} from './cache/decoder-cache.js';
import { resolveModelDir } from './checkpoint/hub.js';
import { PROMPT_FILES, promptFileHashes, TOKENIZER_FILES, weightsContentHash } from './checkpoint/file-hash.js';
import { readUtf8File } from './checkpoint/text-files.js';
import { SafetensorsCheckpoint } from './checkpoint/safetensors.js';
import { languageModelSpelling, specFromConfig, textWeightName, type ModelSpec } from './families/spec.js';
import { mropePositionIds } from './vision/mrope.js';
import { Tokenizer, type ChatMessage } from './tokenizer.js';
import { prequantSchemeFromConfig, type PrequantScheme } from './quant/awq-gptq.js';
import { gptqLinears, parameterCount, resolveWeightFormat, type Int4Method } from './quant/weight-format.js';
import { calibrationBytes, calibrationHessians } from './quant/calibration.js';
import {
  blobBytes,
  blocksPerRow,
  dequantizeRowFrom,
  zeroPointBytesPerRow,
  type Int8Kernel,
  type QuantOptions,
  type WeightDType,
} from './graph/quantized-linear.js';

export interface LoadOptions {
  cacheDir?: string;
  /** onnxruntime intra-op threads; default: all cores. */
  threads?: number;
  revision?: string;
  quiet?: boolean;
  onBuildProgress?: BuildProgress;
  /**
   * Tuning: the output head is split into row blocks of at most this many bytes (default 64 MiB) to bound the load-time
   * peak.
   */
  headChunkBytes?: number;
  /**
   * Weight storage: fp32, or int8/int4 block-wise weight-only quantisation of every linear layer, the
   * embedding table and the output head (onnxruntime MatMulNBits). Default: by model size (weight-format.ts).
   */
  dtype?: WeightDType;
  /**
   * int8/int4: inputs per scale and zero point (a power of two ≥ 16; default 128 for int8; 32 for int4, 16 below 20 M
   * parameters).
   */
  blockSize?: number;
  /** int8/int4: MatMulNBits accuracy_level (0–4; default 4 = int8 compute). */
  accuracyLevel?: QuantOptions['accuracyLevel'];
  /**
   * int8: linear layers as row-wise W8A8 (MatMulIntegerToFloat) or block-wise MatMulNBits; default weight-format.ts
   * defaultInt8Kernel.
   */
  int8Kernel?: Int8Kernel;
  /**
   * int4: how the 4-bit layers' codes are chosen, round-to-nearest or GPTQ (weight-format.ts Int4Method); default by
   * model size.
   */
  int4Method?: Int4Method;
  /** GPTQ: calibration size, seed or damping (default weight-format.ts DEFAULT_GPTQ_CALIBRATION). */
  gptqCalibration?: Partial<GptqCalibration>;
}

/** A head patch: where `mask` is 1, that head's last-position output is replaced by (or added to) `values`. */
export interface HeadPatch {
  mask: Float32Array; // [B, L, H] (0/1)
  values: Float32Array; // [L, H, d]
  mode?: 'replace' | 'add'; // default replace
}

export interface ForwardResult {
  batchSize: number;
  logits: Float32Array; // [B, V] at each row's last token
  logSumExp: Float32Array; // [B] log Σ_v exp(logits): log P(v) = logits[v] − logSumExp
  heads: Float32Array; // [B, L, H, d] o_proj input at the last token (after any patch)
}

/** Keys/values of one prefix (batch 1), per layer [1, KV, P, d], after RoPE. */
export interface KvCache {
  length: number; // P
  keys: Float32Array[];
  values: Float32Array[];
  /**
   * M-RoPE `rope_deltas` of the prefix: an image spreads its tokens' positions over height and width, so the
   * token at index i ≥ P after it has position i + delta (on all three rows). Absent: 0.
   */
  positionDelta?: number;
}

/**
 * One image's features placed in a prompt (image-text checkpoints): the row's ids `start … start + n − 1` are the
 * image's expanded placeholders, and their inputs_embeds rows become `embeds` instead of embedding-table rows.
 */
export interface ImageEmbeds {
  /** Index of the image's first placeholder among the row's ids (for `extend`: among the new ids). */
  start: number;
  /** [n, D] */
  embeds: Float32Array;
  /**
   * M-RoPE families: the image's token grid [t, h, w] after the spatial merge (t·h·w = n), which spreads its positions.
   */
  grid?: readonly [number, number, number];
  /** Qwen3-VL: one [n, D] per DeepStack layer, added to these rows after that layer. */
  deepstack?: readonly Float32Array[];
}

/** Per row of a batch: its images in order (undefined or empty: text only). */
export type RowImages = readonly (readonly ImageEmbeds[] | undefined)[];

export interface LoadInfo {
  modelDir: string;
  cacheEntry: string;
  built: boolean;
  buildSeconds: number;
  loadSeconds: number;
  configHash: string;
  weightsFingerprint: string;
  /**
   * sha256 of each file besides config.json and the weights that decides the judge prompt's ids or pixels
   * (checkpoint/file-hash.ts: the tokenizer and chat template files, and for image-text checkpoints the image
   * processor's), by file name, taken as the model was loaded; null for a file the checkpoint lacks. Criterion files
   * record it and refuse another.
   */
  promptFiles: Record<string, string | null>;
  /** How the weights are stored and multiplied (dtype, block size, accuracy level, pre-quantised scheme). */
  weightFormat: WeightFormat;
  /** The cache root and thread count this decoder was loaded with (a vision tower loaded for it uses the same). */
  cacheDir: string;
  threads: number;
}

/** Work done so far, for cost reports: real tokens fed, padded positions, session runs. */
export interface DecoderStats {
  runs: number;
  tokens: number;
  paddedPositions: number;
}

export class Decoder {
  private disposed = false;
  readonly stats: DecoderStats = { runs: 0, tokens: 0, paddedPositions: 0 };

  private constructor(
    readonly spec: ModelSpec,
    /** null when the checkpoint has no tokenizer.json: it then runs on token ids only. */
    private readonly textTokenizer: Tokenizer | null,
    private readonly session: ort.InferenceSession,
    readonly info: LoadInfo,
    private readonly modelId: string,
    private readonly embeddings: EmbeddingTable,
  ) {}

  /** `model`: a local Hugging Face checkpoint folder or a hub id (downloaded into the cache when online). */
  static async load(model: string, opts: LoadOptions = {}): Promise<Decoder> {
    const modelDir = await resolveModelDir(model, {
      cacheDir: opts.cacheDir,
      revision: opts.revision,
      quiet: opts.quiet,
    });
    const configPath = path.join(modelDir, 'config.json');
    const configText = readUtf8File(configPath, 'a Hugging Face config.json');
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(configText);
    } catch (e) {
      throw new ModelError(`${configPath}: not valid JSON (${(e as Error).message})`);
    }
    const spec = specFromConfig(config, configPath);
    // Hashed before the tokenizer reads them: the identity is of the files this decoder was built from.
    const promptFiles = promptFileHashes(modelDir, spec.imageText ? PROMPT_FILES : TOKENIZER_FILES);
    // Without tokenizer.json the model still runs on token ids; text asks for the tokenizer and fails then.
    const tokenizer = fs.existsSync(path.join(modelDir, 'tokenizer.json')) ? await Tokenizer.load(modelDir) : null;
    let ckpt = SafetensorsCheckpoint.open(modelDir);
    if (spec.imageText) {
      // The language model of an image-text checkpoint, read under text names; the vision tower is VisionTower's.
      try {
        const spelling = languageModelSpelling(spec, ckpt.names(), modelDir);
        ckpt = ckpt.renamed((stored) => textWeightName(spelling, stored));
      } catch (e) {
        ckpt.close(); // an unknown or colliding spelling must not leak the shards' file descriptors
        throw e;
      }
    }
    let entry: { dir: string; built: boolean };
    let fingerprint: string;
    let prequant: PrequantScheme | null;
    let format: WeightFormat;
    const cacheDir = opts.cacheDir ?? defaultCacheDir();
    const t0 = performance.now();
    try {
      prequant = prequantSchemeFromConfig(config, configPath);
      format = resolveWeightFormat(spec, prequant, {
        dtype: opts.dtype,
        blockSize: opts.blockSize,
        accuracyLevel: opts.accuracyLevel,
        int8Kernel: opts.int8Kernel,
        int4Method: opts.int4Method,
        gptqCalibration: opts.gptqCalibration,
      });
      validateCheckpoint(spec, ckpt, prequant);
      fingerprint = weightsContentHash(ckpt.files, path.join(cacheDir, 'hashes'));
      const key = cacheKey(configText, fingerprint, opts.headChunkBytes, format);
      // A GPTQ build needs its calibration inputs first (an async model run); a built entry needs nothing.
      let hessians: Map<string, Float64Array> | undefined;
      if (format.quant?.gptq && !cachedModelExists(cacheDir, key)) {
        // Refuse up front what would run out of memory hours later (a 7B model: ~30 GB fp32 + ~40 GB of Xᵀ X).
        const need = calibrationBytes(
          spec,
          gptqLinears(spec),
          parameterCount(spec),
          Math.min(format.quant.gptq.tokens, spec.maxPositions),
        );
        if (need > 0.8 * os.totalmem()) {
          throw new ModelError(
            `--int4-method gptq: calibrating ${model} would hold ~${(need / 2 ** 30).toFixed(1)} GiB (an fp32 copy of the model, each 4-bit layer's float64 input covariance, and working arrays), ` +
              `more than this machine's ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB allows; use --int4-method rtn, or a published AWQ/GPTQ checkpoint of the model, which loads as it is`,
          );
        }
        const graphs = path.join(cacheDir, 'graphs');
        fs.mkdirSync(graphs, { recursive: true });
        hessians = await calibrationHessians(spec, ckpt, gptqLinears(spec), format.quant.gptq, {
          modelDir,
          workDir: graphs,
          threads: opts.threads,
          onProgress: opts.onBuildProgress,
        });
      }
      entry = ensureCachedModel(
        spec,
        ckpt,
        key,
        cacheDir,
        opts.onBuildProgress,
        opts.headChunkBytes,
        format,
        opts.threads,
        hessians,
      );
    } finally {
      ckpt.close();
    }
    const t1 = performance.now();
    const session = await createSession(entry.dir, opts.threads);
    const t2 = performance.now();
    return new Decoder(
      spec,
      tokenizer,
      session,
      {
        modelDir,
        cacheEntry: entry.dir,
        built: entry.built,
        cacheDir,
        threads: opts.threads ?? os.availableParallelism(),
        buildSeconds: (t1 - t0) / 1000,
        loadSeconds: (t2 - t1) / 1000,
        configHash: createHash('sha256').update(configText).digest('hex'),
        weightsFingerprint: fingerprint!,
        weightFormat: format!,
        promptFiles,
      },
      model,
      openEmbeddings(entry.dir),
    );
  }

  /**
   * A decoder over a model folder cache/decoder-cache.ts wrote outside the cache (GPTQ's fp32 calibration model, whose
   * graph
   * also outputs linear-layer inputs: forwardSites). Runs on token ids; the caller removes the folder after dispose.
   */
  static async openWritten(
    spec: ModelSpec,
    dir: string,
    like: { modelDir: string; threads?: number },
  ): Promise<Decoder> {
    const session = await createSession(dir, like.threads);
    return new Decoder(
      spec,
      null,
      session,
      {
        modelDir: like.modelDir,
        cacheEntry: dir,
        built: true,
        buildSeconds: 0,
        loadSeconds: 0,
        configHash: '',
        weightsFingerprint: '',
        weightFormat: FP32_FORMAT,
        promptFiles: {},
        cacheDir: dir,
        threads: like.threads ?? os.availableParallelism(),
      },
      dir,
      openEmbeddings(dir),
    );
  }

  get id(): string {
    return this.modelId;
  }

  get hasTokenizer(): boolean {
    return this.textTokenizer !== null;
  }

  /** The checkpoint's tokenizer; throws a ModelError naming the folder when it has no tokenizer.json. */
  get tokenizer(): Tokenizer {
    if (this.textTokenizer) return this.textTokenizer;
    throw new ModelError(
      `${path.join(this.info.modelDir, 'tokenizer.json')}: missing, so this checkpoint runs on token ids only ` +
        '(e.g. arm forward --input-ids 1,2,3); text, chat templates and answer tokens need a tokenizer',
    );
  }
  /** Size of the weights file the session reads (float32, or quantised codes + scales + zero points). */
  get weightBytes(): number {
    return fs.statSync(path.join(this.info.cacheEntry, DATA_FILE)).size;
  }

  // ---------- running ----------

  /**
   * Runs rows of token ids (each its own sequence, any lengths) as one left-padded batch, with no past.
   * Padding never changes a row's result: masked keys, positions counted from each row's first token.
   */
  async forward(rows: number[][], patch?: HeadPatch, opts: { images?: RowImages } = {}): Promise<ForwardResult> {
    const r = await this.run(rows, emptyKv(this.spec), patch, false, opts.images);
    return { batchSize: rows.length, logits: r.logits, logSumExp: r.logSumExp, heads: r.heads };
  }

  /**
   * forward (no patch), also returning graph outputs beyond the standard ones by name: a calibration model's
   * linear-layer inputs over all positions, [B, S, K] each (left padding included; rows of equal length have none).
   */
  async forwardSites(
    rows: number[][],
    sites: readonly string[],
  ): Promise<{ result: ForwardResult; sites: Map<string, Float32Array> }> {
    const missing = sites.filter((s) => !this.session.outputNames.includes(s));
    if (missing.length) throw new ModelError(`forwardSites: the graph does not output ${missing.join(', ')}`);
    const r = await this.run(rows, emptyKv(this.spec), undefined, false, undefined, sites);
    return {
      result: { batchSize: rows.length, logits: r.logits, logSumExp: r.logSumExp, heads: r.heads },
      sites: r.sites,
    };
  }

  /** Runs `ids` after `past` (batch 1) and returns the cache extended by them, with the last logits. */
  async extend(
    past: KvCache,
    ids: number[],
    opts: { images?: readonly ImageEmbeds[] } = {},
  ): Promise<{ kv: KvCache; logits: Float32Array; heads: Float32Array }> {
    if (ids.length === 0) throw new ModelError('extend: no tokens to add');
    const r = await this.run([ids], past, undefined, true, opts.images ? [opts.images] : undefined);
    const kv = appendKv(this.spec, past, r.newKeys!, r.newValues!, ids.length);
    if (r.positionDeltas[0] !== 0) kv.positionDelta = r.positionDeltas[0];
    return { kv, logits: r.logits, heads: r.heads };
  }

  /**
   * The KV cache of a prefix (e.g. a prompt without its last token). With `images` (their placeholders in the
   * prefix) the image lives in the cache: steps after it (stepShared, forwardShared, extend) need no image.
   */
  async prefill(prefixIds: number[], opts: { images?: readonly ImageEmbeds[] } = {}): Promise<KvCache> {
    return (await this.extend(emptyKv(this.spec), prefixIds, opts)).kv;
  }

  /**
   * One token `lastTokenId` after the shared prefix `kv`, as B rows that differ only in their patch
   * (`patch.mask` is [B, L, H]). The prefix is fed once with batch 1 and broadcast inside the graph.
   */
  async stepShared(kv: KvCache, lastTokenId: number, patch: HeadPatch): Promise<ForwardResult> {
    const { numLayers: L, numHeads: H } = this.spec;
    const rows = patch.mask.length / (L * H);
    if (!Number.isInteger(rows) || rows < 1)
      throw new ModelError(`stepShared: patch.mask length ${patch.mask.length} is not a multiple of L*H = ${L * H}`);
    return this.forwardShared(
      kv,
      Array.from({ length: rows }, () => [lastTokenId]),
      patch,
    );
  }

  /**
   * Rows of different continuations after one shared prefix `kv` (e.g. two responses to one prompt),
   * left-padded among themselves; the prefix is computed once and broadcast. `images`: per row, images whose
   * placeholders lie in that row's suffix (e.g. a query's image after shared demonstrations).
   */
  async forwardShared(
    kv: KvCache,
    suffixRows: number[][],
    patch?: HeadPatch,
    opts: { images?: RowImages } = {},
  ): Promise<ForwardResult> {
    const r = await this.run(suffixRows, kv, patch, false, opts.images);
    return { batchSize: suffixRows.length, logits: r.logits, logSumExp: r.logSumExp, heads: r.heads };
  }

  /** Greedy decoding with a KV cache. Stops at `maxNewTokens` or at a stop token (default: the EOS ids). */
  async generate(
    promptIds: number[],
    opts: {
      maxNewTokens?: number;
      stopTokens?: number[];
      onToken?: (id: number) => void;
      images?: readonly ImageEmbeds[];
    } = {},
  ): Promise<number[]> {
    const max = opts.maxNewTokens ?? 64;
    const stop = new Set(opts.stopTokens ?? this.spec.eosTokenIds);
    if (promptIds.length + max > this.spec.maxPositions)
      throw new ModelError(
        `generate: ${promptIds.length} prompt + ${max} new tokens exceed the model's ${this.spec.maxPositions} positions`,
      );
    const out: number[] = [];
    let { kv, logits } = await this.extend(emptyKv(this.spec), promptIds, { images: opts.images });
    for (let i = 0; i < max; i++) {
      const next = argmax(logits);
      out.push(next);
      opts.onToken?.(next);
      if (stop.has(next) || i === max - 1) break;
      ({ kv, logits } = await this.extend(kv, [next]));
    }
    return out;
  }

  /**
   * The raw tools' prompt (`arm forward`/`generate --prompt`) → token ids. Without the chat template, text that
   * spells a special token becomes it (to probe a model by hand); through it, the text is one untrusted user turn.
   * Judge prompts never come through here (src/arm/template.ts).
   */
  encodePrompt(text: string, opts: { chat?: boolean } = {}): number[] {
    return opts.chat
      ? this.tokenizer.applyChatTemplate([{ role: 'user', content: text }])
      : this.tokenizer.encode(text);
  }

  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): number[] {
    return this.tokenizer.applyChatTemplate(messages, opts);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.embeddings.close();
    await this.session.release();
  }

  private async run(
    rows: number[][],
    past: KvCache,
    patch: HeadPatch | undefined,
    wantKv: boolean,
    images?: RowImages,
    sites: readonly string[] = [],
  ) {
    if (this.disposed) throw new ModelError('the decoder was disposed');
    const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: d, vocabSize: V } = this.spec;
    const B = rows.length;
    if (B === 0) throw new ModelError('forward: empty batch');
    const S = Math.max(...rows.map((r) => r.length));
    if (S === 0) throw new ModelError('forward: a row has no tokens');
    const P = past.length;
    if (P + S > this.spec.maxPositions)
      throw new ModelError(`input of ${P + S} tokens exceeds the model's ${this.spec.maxPositions} positions`);
    const D = this.spec.hiddenSize;
    const embeds = new Float32Array(B * S * D); // padding positions stay zero (masked anyway)
    const mask = new BigInt64Array(B * (P + S));
    if (images && images.length !== B)
      throw new ModelError(`forward: images are given for ${images.length} rows, the batch has ${B}`);
    rows.forEach((row, b) => {
      for (const t of row)
        if (!Number.isInteger(t) || t < 0 || t >= V)
          throw new ModelError(`token id ${t} is outside the vocabulary (0..${V - 1})`);
      const offset = S - row.length;
      for (let j = 0; j < P; j++) mask[b * (P + S) + j] = 1n;
      for (let s = 0; s < S; s++) {
        const real = s >= offset;
        if (real) this.embeddings.row(row[s - offset]!, embeds, (b * S + s) * D, this.spec.embedScale);
        mask[b * (P + S) + P + s] = real ? 1n : 0n;
      }
    });
    const position = this.positionIds(rows, S, past, images);
    const deepstack = this.placeImages(rows, S, embeds, images);
    if (patch && patch.mask.length !== B * L * H)
      throw new ModelError(`patch.mask has ${patch.mask.length} values, expected B*L*H = ${B * L * H}`);
    if (patch && patch.values.length !== L * H * d)
      throw new ModelError(`patch.values has ${patch.values.length} values, expected L*H*d = ${L * H * d}`);
    if (patch)
      assertFinite(
        patch.values,
        (i) =>
          `patch.values holds a non-finite number at layer ${Math.floor(i / (H * d))}, head ${Math.floor(i / d) % H} (a criterion file or mean with NaN/Inf?)`,
      );
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: new ort.Tensor('float32', embeds, [B, S, D]),
      attention_mask: new ort.Tensor('int64', mask, [B, P + S]),
      position_ids: new ort.Tensor('int64', position.ids, position.dims),
      patch_mask: new ort.Tensor('float32', patch?.mask ?? new Float32Array(B * L * H), [B, L, H]),
      patch_values: new ort.Tensor('float32', patch?.values ?? new Float32Array(L * H * d), [L, H, d]),
      patch_replace: new ort.Tensor('float32', Float32Array.of(patch?.mode === 'add' ? 0 : 1), []),
    };
    if (deepstack) feeds.deepstack_embeds = new ort.Tensor('float32', deepstack.data, deepstack.dims);
    for (let l = 0; l < L; l++) {
      feeds[`past.${l}.key`] = new ort.Tensor('float32', past.keys[l]!, [1, KV, P, d]);
      feeds[`past.${l}.value`] = new ort.Tensor('float32', past.values[l]!, [1, KV, P, d]);
    }
    const fetches = ['logits', 'logsumexp', 'heads'];
    if (wantKv) for (let l = 0; l < L; l++) fetches.push(`new.${l}.key`, `new.${l}.value`);
    fetches.push(...sites);
    const out = await this.session.run(feeds, fetches);
    this.stats.runs++;
    for (const row of rows) {
      this.stats.tokens += row.length;
      this.stats.paddedPositions += S - row.length;
    }
    const data = (name: string) => out[name]!.data as Float32Array;
    const result = {
      logits: data('logits'),
      logSumExp: data('logsumexp'),
      heads: data('heads'),
      newKeys: wantKv ? Array.from({ length: L }, (_, l) => data(`new.${l}.key`)) : undefined,
      newValues: wantKv ? Array.from({ length: L }, (_, l) => data(`new.${l}.value`)) : undefined,
      positionDeltas: position.deltas,
      sites: new Map(sites.map((s) => [s, data(s)] as const)),
    };
    for (const t of Object.values(out)) t.dispose();
    // NaN/Inf logits would otherwise surface as "0 heads selected" or null scores with exit code 0.
    assertFinite(
      result.logSumExp,
      (b) =>
        `${this.info.modelDir}: the model produced non-finite logits (row ${b} of ${B}, ${rows[b]!.length} tokens); ` +
        'likely NaN/Inf in the weights or a bad number in config.json (e.g. rms_norm_eps, rope_theta)',
    );
    return result;
  }

  /**
   * Position ids of a left-padded batch after `past`: [B, S], or [3, B, S] for M-RoPE (temporal, height, width:
   * text advances all three, an image's tokens share the temporal index and spread over its grid, HF's
   * get_rope_index). A row's first token sits at position P + the prefix's delta. Returns each row's delta after it.
   */
  private positionIds(
    rows: number[][],
    S: number,
    past: KvCache,
    images: RowImages | undefined,
  ): { ids: BigInt64Array; dims: number[]; deltas: number[] } {
    const B = rows.length,
      P = past.length,
      delta = past.positionDelta ?? 0;
    const mrope = this.spec.imageText?.mropeRows ? 3 : 0;
    const ids = new BigInt64Array(Math.max(mrope, 1) * B * S); // padding positions: 0 (masked anyway)
    const deltas = rows.map((row, b) => {
      const offset = S - row.length;
      if (!mrope) {
        for (let s = 0; s < row.length; s++) ids[b * S + offset + s] = BigInt(P + delta + s);
        return delta;
      }
      const placed = (images?.[b] ?? []).map((img, i) => {
        if (!img.grid)
          throw new ModelError(`image ${i} of row ${b}: M-RoPE needs the image's token grid (ImageEmbeds.grid)`);
        return { span: { start: img.start, length: img.embeds.length / this.spec.hiddenSize }, gridThw: img.grid };
      });
      const local = mropePositionIds(row.length, placed, 1); // grids are already merged
      const n = row.length;
      for (let r = 0; r < 3; r++)
        for (let s = 0; s < n; s++) ids[(r * B + b) * S + offset + s] = BigInt(P + delta + local.positions[r * n + s]!);
      return delta + local.delta;
    });
    return { ids, dims: mrope ? [3, B, S] : [B, S], deltas };
  }

  /**
   * Writes each image's features over its placeholder rows of `embeds` [B, S, D]; returns the DeepStack input
   * [k, B, S, D] for Qwen3-VL (zeros but at image rows), or a broadcast zero [k, 1, 1, D] when no row has an image.
   */
  private placeImages(
    rows: number[][],
    S: number,
    embeds: Float32Array,
    images: RowImages | undefined,
  ): { data: Float32Array; dims: number[] } | null {
    const D = this.spec.hiddenSize,
      B = rows.length;
    const k = this.spec.imageText?.deepstackLayers ?? 0;
    const any = images?.some((r) => r && r.length > 0) ?? false;
    if (any && !this.spec.imageText)
      throw new ModelError(`${this.info.modelDir}: images were given, but this is a text-only checkpoint`);
    const deepstack =
      k > 0
        ? any
          ? { data: new Float32Array(k * B * S * D), dims: [k, B, S, D] }
          : { data: new Float32Array(k * D), dims: [k, 1, 1, D] }
        : null;
    if (!any) return deepstack;
    rows.forEach((row, b) => {
      const offset = S - row.length;
      (images![b] ?? []).forEach((img, i) => {
        const n = img.embeds.length / D;
        if (!Number.isInteger(n) || n < 1)
          throw new ModelError(
            `image ${i} of row ${b}: ${img.embeds.length} feature values are not whole rows of the hidden size ${D}`,
          );
        if (!Number.isInteger(img.start) || img.start < 0 || img.start + n > row.length) {
          throw new ModelError(
            `image ${i} of row ${b}: its ${n} rows from index ${img.start} do not fit the row's ${row.length} tokens`,
          );
        }
        embeds.set(img.embeds, (b * S + offset + img.start) * D);
        if (!deepstack) return;
        if (!img.deepstack || img.deepstack.length !== k || img.deepstack.some((f) => f.length !== img.embeds.length)) {
          throw new ModelError(
            `image ${i} of row ${b}: this model adds ${k} DeepStack feature sets of [${n}, ${D}] (ImageEmbeds.deepstack)`,
          );
        }
        img.deepstack.forEach((f, j) => deepstack.data.set(f, ((j * B + b) * S + offset + img.start) * D));
      });
    });
    return deepstack;
  }
}

/**
 * embed_tokens rows read on demand from weights.bin (through the page cache, not held in the heap), with a
 * small cache of recent rows: prompts repeat template tokens a lot.
 */
class EmbeddingTable {
  private readonly fd: number;
  private readonly cache = new Map<number, Float32Array>();
  private static readonly CACHE_ROWS = 4096;

  constructor(
    file: string,
    private readonly layout: Layout['embed'],
  ) {
    this.fd = fs.openSync(file, 'r');
  }

  /**
   * Copies the row of token `id` into `out` at `at`, times `scale` when given (Gemma's √D): one float32
   * product per value, as transformers' float32 multiply (a product of two float32 is exact in a double).
   */
  row(id: number, out: Float32Array, at: number, scale: number | null = null): void {
    let r = this.cache.get(id);
    if (!r) {
      r = this.read(id);
      if (this.cache.size >= EmbeddingTable.CACHE_ROWS) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(id, r);
    }
    if (scale === null) out.set(r, at);
    else for (let i = 0; i < r.length; i++) out[at + i] = r[i]! * scale;
  }

  /** Row `id` as float32: read as is, or its codes, scales and zero points read and dequantised. */
  private read(id: number): Float32Array {
    const { cols, quant } = this.layout;
    const r = new Float32Array(cols);
    if (!quant) {
      this.readAt(new Uint8Array(r.buffer), this.layout.offset + id * r.byteLength, id);
      return r;
    }
    const nb = blocksPerRow(cols, quant.blockSize);
    const codes = new Uint8Array(nb * blobBytes(quant.bits, quant.blockSize));
    const scales = new Float32Array(nb);
    const zeros = new Uint8Array(zeroPointBytesPerRow(nb, quant.bits));
    this.readAt(codes, this.layout.offset + id * codes.length, id);
    this.readAt(new Uint8Array(scales.buffer), quant.scalesOffset + id * scales.byteLength, id);
    this.readAt(zeros, quant.zeroPointsOffset + id * zeros.length, id);
    return dequantizeRowFrom(codes, 0, scales, 0, zeros, 0, cols, quant.bits, quant.blockSize, r, 0);
  }

  private readAt(bytes: Uint8Array, position: number, id: number): void {
    const n = fs.readSync(this.fd, bytes, 0, bytes.length, position);
    if (n !== bytes.length)
      throw new ModelError(`embedding row ${id}: short read from the cached weights (rebuild the cache entry)`);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

function assertFinite(x: Float32Array, message: (index: number) => string): void {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new ModelError(message(i));
}

export function emptyKv(spec: ModelSpec): KvCache {
  return {
    length: 0,
    keys: Array.from({ length: spec.numLayers }, () => new Float32Array(0)),
    values: Array.from({ length: spec.numLayers }, () => new Float32Array(0)),
  };
}

/** [1,KV,P,d] ++ [1,KV,S,d] → [1,KV,P+S,d], per layer. */
function appendKv(
  spec: ModelSpec,
  past: KvCache,
  newKeys: Float32Array[],
  newValues: Float32Array[],
  added: number,
): KvCache {
  const { numKvHeads: KV, headDim: d } = spec;
  const P = past.length;
  const join = (a: Float32Array, b: Float32Array) => {
    const out = new Float32Array(KV * (P + added) * d);
    for (let h = 0; h < KV; h++) {
      out.set(a.subarray(h * P * d, (h + 1) * P * d), h * (P + added) * d);
      out.set(b.subarray(h * added * d, (h + 1) * added * d), h * (P + added) * d + P * d);
    }
    return out;
  };
  return {
    length: P + added,
    keys: past.keys.map((k, l) => join(k, newKeys[l]!)),
    values: past.values.map((v, l) => join(v, newValues[l]!)),
  };
}

export function argmax(x: ArrayLike<number>, offset = 0, length = x.length - offset): number {
  let best = 0;
  for (let i = 1; i < length; i++) if (x[offset + i]! > x[offset + best]!) best = i;
  return best;
}

async function createSession(entryDir: string, threads?: number): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(path.join(entryDir, MODEL_FILE), {
    intraOpNumThreads: threads ?? os.availableParallelism(),
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
}

function openEmbeddings(entryDir: string): EmbeddingTable {
  const layout = JSON.parse(fs.readFileSync(path.join(entryDir, LAYOUT_FILE), 'utf8')) as Layout;
  return new EmbeddingTable(path.join(entryDir, DATA_FILE), layout.embed);
}
