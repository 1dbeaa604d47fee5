/**
 * Decoder: a loaded checkpoint you can run. Wraps one onnxruntime session over the graph of
 * graph/decoder-graph.ts and keeps the KV cache outside it (in JS, or on a WebGPU device: device-kv.ts), fed back
 * as the next run's past, which is what lets one graph serve full forwards, prefill, shared-prefix patch steps and
 * greedy generation.
 *
 * Loading, in order: the folder or hub download (checkpoint/hub.ts), config.json → ModelSpec (families/), the
 * weight format (quant/weight-format.ts), the checkpoint checked against the spec (cache/decoder-weights.ts), its
 * fingerprint and cache key, GPTQ's calibration when a GPTQ entry must be built (quant/calibration.ts, run here
 * on a Decoder over the fp32 calibration model), the cache entry found or built (cache/decoder-cache.ts), the
 * session opened. Token ids become inputs_embeds through embedding-table.ts.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import * as ort from 'onnxruntime-node';
import { ModelError } from './errors.js';
import { attentionLayout, deviceProblem, halfPrecisionProblem, openSession, type Device } from './session.js';
import { DeviceKvs, type DeviceKv } from './device-kv.js';
import {
  cachedModelExists,
  cacheKey,
  DATA_FILE,
  ensureCachedModel,
  graphsDir,
  MODEL_FILE,
  writeCalibrationModel,
  type BuildProgress,
} from './cache/decoder-cache.js';
import { validateCheckpoint } from './cache/decoder-weights.js';
import { resolveModelDir } from './checkpoint/hub.js';
import { PROMPT_FILES, promptFileHashes, TOKENIZER_FILES, weightsContentHash } from './checkpoint/file-hash.js';
import { readUtf8File } from './checkpoint/text-files.js';
import { SafetensorsCheckpoint } from './checkpoint/safetensors.js';
import { specFromConfig } from './families/config.js';
import { languageModelSpelling, textWeightName } from './families/weights.js';
import type { ModelSpec } from './families/types.js';
import { DECODER_INPUTS as INPUT, DECODER_OUTPUTS as OUTPUT } from './graph/sites.js';
import { mropePositionIds } from './vision/mrope.js';
import { Tokenizer, type ChatMessage } from './tokenizer.js';
import { prequantSchemeFromConfig } from './quant/awq-gptq.js';
import {
  defaultDType,
  describeWeightFormat,
  FP32_FORMAT,
  gptqLinears,
  parameterCount,
  resolveWeightFormat,
  type GpuSupport,
  type GptqCalibration,
  type Int4Method,
  type Int8Kernel,
  type WeightDType,
  type WeightFormat,
} from './quant/weight-format.js';
import { calibrationBytes, calibrationHessians } from './quant/calibration.js';
import type { QuantOptions } from './quant/layout.js';
import { openEmbeddings, type EmbeddingTable } from './embedding-table.js';
import { contentHashDir, defaultCacheDir } from '../util/cache-root.js';
import type { ImageEmbeds } from './vision/image-embeds.js';

export type { ImageEmbeds };

export interface LoadOptions {
  cacheDir?: string;
  /**
   * Where the graph runs: cpu (default), webgpu or cuda (session.ts); a missing provider or adapter is an error.
   * GPU devices run their own graph variant (one attention chunk, a masked past slot) and block-wise int8.
   */
  device?: Device;
  /** onnxruntime intra-op threads; default: all cores. */
  threads?: number;
  revision?: string;
  quiet?: boolean;
  onBuildProgress?: BuildProgress;
  /**
   * Tuning: the output head is split into row blocks of at most this many bytes (default 64 MiB) to bound the
   * load-time peak.
   */
  headChunkBytes?: number;
  /**
   * Weight storage: fp32; fp16 (GPU devices only: linear layers, embedding and head in half precision, the rest
   * float32); or int8/int4 block-wise weight-only quantisation of every linear layer, the embedding table and the
   * output head (onnxruntime MatMulNBits). Default: by model size and device (weight-format.ts defaultDType; a GPU
   * takes fp16, or what its adapter runs without fp16 shaders, and int4 for large models; logged unless quiet).
   */
  dtype?: WeightDType;
  /**
   * int8/int4: inputs per scale and zero point (a power of two ≥ 16; default 128 for int8; 32 for int4, 16 below
   * 20 M parameters).
   */
  blockSize?: number;
  /** int8/int4: MatMulNBits accuracy_level (0–4; default 4 = int8 compute). */
  accuracyLevel?: QuantOptions['accuracyLevel'];
  /**
   * int8: linear layers as row-wise W8A8 (MatMulIntegerToFloat) or block-wise MatMulNBits; default
   * weight-format.ts defaultInt8Kernel.
   */
  int8Kernel?: Int8Kernel;
  /**
   * int4: how the 4-bit layers' codes are chosen, round-to-nearest or GPTQ (weight-format.ts Int4Method); default
   * by model size.
   */
  int4Method?: Int4Method;
  /** GPTQ: calibration size, seed or damping (default weight-format.ts DEFAULT_GPTQ_CALIBRATION). */
  gptqCalibration?: Partial<GptqCalibration>;
  /**
   * Where a prefix's KV cache lives between runs: 'device' (default on webgpu: on the GPU, fed back without a copy)
   * or 'host' (JS arrays, uploaded with each run: the only choice on cpu and cuda).
   */
  kvCache?: KvPlace;
}

/** Where a KV cache lives between runs: on the device (WebGPU) or in JS arrays. */
export type KvPlace = 'device' | 'host';

/** A head patch: where `mask` is 1, that head's last-position output is replaced by (or added to) `values`. */
export interface HeadPatch {
  mask: Float32Array; // [B, L, H] (0/1)
  /** [L, H, d] for every row, or [B, L, H, d]: one row's values each (several criteria after one prefix). */
  values: Float32Array;
  /** Default replace; per row (length B) when the rows patch for different criteria. */
  mode?: PatchMode | readonly PatchMode[];
}

type PatchMode = 'replace' | 'add';

export interface ForwardResult {
  batchSize: number;
  logits: Float32Array; // [B, V] at each row's last token
  logSumExp: Float32Array; // [B] log Σ_v exp(logits): log P(v) = logits[v] − logSumExp
  heads: Float32Array; // [B, L, H, d] o_proj input at the last token (after any patch)
}

/**
 * Keys/values of one prefix (batch 1), per layer [1, KV, P, d], after RoPE: in JS arrays, or on the GPU (`device`,
 * a WebGPU decoder's; `keys` and `values` are then empty). disposeKv frees a device cache at once.
 */
export interface KvCache {
  length: number; // P
  keys: Float32Array[];
  values: Float32Array[];
  device?: DeviceKv;
  /**
   * M-RoPE `rope_deltas` of the prefix: an image spreads its tokens' positions over height and width, so the
   * token at index i ≥ P after it has position i + delta (on all three rows). Absent: 0.
   */
  positionDelta?: number;
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
   * processor's), by file name, taken as the model was loaded; null for a file the checkpoint lacks. Criterion
   * files record it and refuse another.
   */
  promptFiles: Record<string, string | null>;
  /** How the weights are stored and multiplied (dtype, block size, accuracy level, pre-quantised scheme). */
  weightFormat: WeightFormat;
  /** The cache root and thread count this decoder was loaded with (a vision tower loaded for it uses the same). */
  cacheDir: string;
  threads: number;
  /** The device the session runs on. */
  device: Device;
  /** Where extend and prefill keep the KV cache (LoadOptions.kvCache). */
  kvCache: KvPlace;
}

/** Work done so far, for cost reports: real tokens fed, padded positions, session runs. */
export interface DecoderStats {
  runs: number;
  tokens: number;
  paddedPositions: number;
  /** Bytes of past keys and values fed from JS arrays to a GPU (0 on the CPU, which reads them in place). */
  kvUploadBytes: number;
}

export class Decoder {
  private disposed = false;
  readonly stats: DecoderStats = { runs: 0, tokens: 0, paddedPositions: 0, kvUploadBytes: 0 };
  private readonly deviceCaches = new DeviceKvs();

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
    const config = readConfig(modelDir);
    const spec = specFromConfig(config.json, config.file);
    // Hashed before the tokenizer reads them: the identity is of the files this decoder was built from.
    const promptFiles = promptFileHashes(modelDir, spec.imageText ? PROMPT_FILES : TOKENIZER_FILES);
    // Without tokenizer.json the model still runs on token ids; text asks for the tokenizer and fails then.
    const tokenizer = fs.existsSync(path.join(modelDir, 'tokenizer.json')) ? await Tokenizer.load(modelDir) : null;
    const ckpt = openLanguageModel(spec, modelDir);
    const cacheDir = opts.cacheDir ?? defaultCacheDir();
    const t0 = performance.now();
    let built: BuiltEntry;
    try {
      built = await buildCacheEntry(spec, ckpt, { model, modelDir, config, cacheDir }, opts);
    } finally {
      ckpt.close();
    }
    const t1 = performance.now();
    const device = opts.device ?? 'cpu';
    const kvCache = kvPlace(device, opts.kvCache);
    const session = await openSession(path.join(built.dir, MODEL_FILE), {
      threads: opts.threads,
      device,
      deviceOutputs: kvCache === 'device' ? deviceKvOutputs(spec) : [],
    });
    const t2 = performance.now();
    return new Decoder(
      spec,
      tokenizer,
      session,
      {
        modelDir,
        cacheEntry: built.dir,
        built: built.built,
        cacheDir,
        threads: opts.threads ?? os.availableParallelism(),
        device,
        kvCache,
        buildSeconds: (t1 - t0) / 1000,
        loadSeconds: (t2 - t1) / 1000,
        configHash: createHash('sha256').update(config.text).digest('hex'),
        weightsFingerprint: built.weightsFingerprint,
        weightFormat: built.format,
        promptFiles,
      },
      model,
      openEmbeddings(built.dir),
    );
  }

  /**
   * A decoder over a model folder cache/decoder-cache.ts wrote outside the cache (GPTQ's fp32 calibration model,
   * whose graph also outputs linear-layer inputs: forwardSites). Runs on token ids; the caller removes the folder
   * after dispose.
   */
  static async openWritten(
    spec: ModelSpec,
    dir: string,
    like: { modelDir: string; threads?: number },
  ): Promise<Decoder> {
    const session = await openSession(path.join(dir, MODEL_FILE), { threads: like.threads });
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
        device: 'cpu',
        kvCache: 'host',
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
    const out = await this.run(rows, emptyKv(this.spec), { patch, images: opts.images });
    return { batchSize: rows.length, logits: out.logits, logSumExp: out.logSumExp, heads: out.heads };
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
    const out = await this.run(rows, emptyKv(this.spec), { sites });
    return {
      result: { batchSize: rows.length, logits: out.logits, logSumExp: out.logSumExp, heads: out.heads },
      sites: out.sites,
    };
  }

  /** Runs `ids` after `past` (batch 1) and returns the cache extended by them, with the last logits. */
  async extend(
    past: KvCache,
    ids: number[],
    opts: { images?: readonly ImageEmbeds[] } = {},
  ): Promise<{ kv: KvCache; logits: Float32Array; heads: Float32Array }> {
    if (ids.length === 0) throw new ModelError('extend: no tokens to add');
    const out = await this.run([ids], past, { withKv: true, images: opts.images ? [opts.images] : undefined });
    const kv = out.deviceKv
      ? { length: past.length + ids.length, keys: [], values: [], device: out.deviceKv }
      : appendKv(this.spec, past, out.newKeys!, out.newValues!, ids.length);
    if (out.positionDeltas[0] !== 0) kv.positionDelta = out.positionDeltas[0];
    return { kv, logits: out.logits, heads: out.heads };
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
    const out = await this.run(suffixRows, kv, { patch, images: opts.images });
    return { batchSize: suffixRows.length, logits: out.logits, logSumExp: out.logSumExp, heads: out.heads };
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
        `generate: ${promptIds.length} prompt + ${max} new tokens ` +
          `exceed the model's ${this.spec.maxPositions} positions`,
      );
    const out: number[] = [];
    let { kv, logits } = await this.extend(emptyKv(this.spec), promptIds, { images: opts.images });
    for (let i = 0; i < max; i++) {
      const next = argmax(logits);
      out.push(next);
      opts.onToken?.(next);
      if (stop.has(next) || i === max - 1) break;
      const previous = kv;
      ({ kv, logits } = await this.extend(kv, [next]));
      disposeKv(previous); // a device cache's memory is freed now, not when the GC gets to it
    }
    disposeKv(kv);
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
    this.deviceCaches.disposeAll();
    await this.session.release();
  }

  /** One session run over a left-padded batch after `past`. */
  private async run(rows: number[][], past: KvCache, opts: RunOptions = {}): Promise<RunResult> {
    if (this.disposed) throw new ModelError('the decoder was disposed');
    const { numLayers: L, numHeads: H } = this.spec;
    const B = rows.length;
    const S = this.checkBatch(rows, past, opts.images);
    const D = this.spec.hiddenSize;
    const { embeds, mask } = this.embedBatch(rows, S, past);
    const position = this.positionIds(rows, S, past, opts.images);
    const deepstack = this.placeImages(rows, S, embeds, opts.images);
    const patch = opts.patch;
    this.checkPatch(patch, B);
    const feeds: Record<string, ort.Tensor> = {
      [INPUT.inputsEmbeds]: new ort.Tensor('float32', embeds, [B, S, D]),
      ...this.pastFeeds(past, mask, B, S),
      [INPUT.positionIds]: new ort.Tensor('int64', position.ids, position.dims),
      [INPUT.patchMask]: new ort.Tensor('float32', patch?.mask ?? new Float32Array(B * L * H), [B, L, H]),
      ...patchFeeds(patch, this.spec),
    };
    if (deepstack) feeds[INPUT.deepstackEmbeds] = new ort.Tensor('float32', deepstack.data, deepstack.dims);
    const sites = opts.sites ?? [];
    const fetches: string[] = [OUTPUT.logits, OUTPUT.logsumexp, OUTPUT.heads];
    const kvOutputs = opts.withKv ? this.kvOutputs(past) : [];
    fetches.push(...kvOutputs, ...sites);
    // With device outputs onnxruntime-node 1.30 reads the i-th fetch's location as the i-th graph output's, so a
    // device-cache session fetches every output, in graph order (the unused are device tensors: nothing downloads).
    const out = await this.session.run(feeds, this.info.kvCache === 'device' ? this.session.outputNames : fetches);
    this.stats.runs++;
    for (const row of rows) {
      this.stats.tokens += row.length;
      this.stats.paddedPositions += S - row.length;
    }
    const data = (name: string) => out[name]!.data as Float32Array;
    const onDevice = this.info.kvCache === 'device';
    const hostKv = opts.withKv && !onDevice;
    const result: RunResult = {
      logits: data(OUTPUT.logits),
      logSumExp: data(OUTPUT.logsumexp),
      heads: data(OUTPUT.heads),
      newKeys: hostKv ? Array.from({ length: L }, (_, l) => data(OUTPUT.newKey(l))) : undefined,
      newValues: hostKv ? Array.from({ length: L }, (_, l) => data(OUTPUT.newValue(l))) : undefined,
      deviceKv: opts.withKv && onDevice ? this.keepDeviceKv(out, kvOutputs) : undefined,
      positionDeltas: position.deltas,
      sites: new Map(sites.map((s) => [s, data(s)] as const)),
    };
    // A device cache's tensors stay alive (result.deviceKv); every other output is released now.
    for (const t of Object.values(out)) if (!result.deviceKv?.has(t)) t.dispose();
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
   * The outputs that extend a cache after `past`, keys and values per layer: the new positions' (new.*), or on the
   * GPU after a past the whole present cache (present.*, which keeps the past on the device; after an empty past
   * present.* would hold the masked slot, so the new positions are the cache then).
   */
  private kvOutputs(past: KvCache): string[] {
    const whole = this.info.kvCache === 'device' && past.length > 0;
    const key = whole ? OUTPUT.presentKey : OUTPUT.newKey;
    const value = whole ? OUTPUT.presentValue : OUTPUT.newValue;
    return Array.from({ length: this.spec.numLayers }, (_, l) => [key(l), value(l)]).flat();
  }

  /** The device tensors of kvOutputs (keys and values alternating by layer) as a cache this decoder tracks. */
  private keepDeviceKv(out: ort.InferenceSession.ReturnType, names: string[]): DeviceKv {
    const tensors = names.map((name) => out[name]!);
    return this.deviceCaches.track(
      tensors.filter((_, i) => i % 2 === 0),
      tensors.filter((_, i) => i % 2 === 1),
      this,
    );
  }

  /**
   * attention_mask [B, P + S] and each layer's past [1, KV, P, d]. A GPU graph gets one masked slot of zeros for an
   * empty past (session.ts attentionLayout: GPU kernels refuse zero-sized tensors); a masked key changes nothing.
   */
  private pastFeeds(past: KvCache, mask: BigInt64Array, B: number, S: number): Record<string, ort.Tensor> {
    const { numLayers: L, numKvHeads: KV, headDim: d } = this.spec;
    const slot = this.info.device !== 'cpu' && past.length === 0;
    const P = slot ? 1 : past.length;
    let fedMask = mask;
    if (slot) {
      fedMask = new BigInt64Array(B * (1 + S)); // the slot's column stays 0
      for (let b = 0; b < B; b++) fedMask.set(mask.subarray(b * S, (b + 1) * S), b * (1 + S) + 1);
    }
    const zeros = new Float32Array(KV * d);
    const feeds: Record<string, ort.Tensor> = { [INPUT.attentionMask]: new ort.Tensor('int64', fedMask, [B, P + S]) };
    for (let l = 0; l < L; l++) {
      const onDevice = past.device?.layer(l, this);
      feeds[INPUT.pastKey(l)] = onDevice?.key ?? new ort.Tensor('float32', slot ? zeros : past.keys[l]!, [1, KV, P, d]);
      feeds[INPUT.pastValue(l)] =
        onDevice?.value ?? new ort.Tensor('float32', slot ? zeros : past.values[l]!, [1, KV, P, d]);
    }
    // What a GPU gets through host memory: the JS arrays of a host cache, or the masked slot (1 · KV · d each).
    if (this.info.device !== 'cpu')
      for (let l = 0; l < L; l++)
        for (const t of [feeds[INPUT.pastKey(l)]!, feeds[INPUT.pastValue(l)]!])
          if (t.location === 'cpu') this.stats.kvUploadBytes += t.size * 4;
    return feeds;
  }

  /** The batch's padded length S, after checking the batch fits the model and its images match its rows. */
  private checkBatch(rows: number[][], past: KvCache, images: RowImages | undefined): number {
    const B = rows.length;
    if (B === 0) throw new ModelError('forward: empty batch');
    const S = Math.max(...rows.map((row) => row.length));
    if (S === 0) throw new ModelError('forward: a row has no tokens');
    const P = past.length;
    if (P + S > this.spec.maxPositions)
      throw new ModelError(`input of ${P + S} tokens exceeds the model's ${this.spec.maxPositions} positions`);
    if (images && images.length !== B)
      throw new ModelError(`forward: images are given for ${images.length} rows, the batch has ${B}`);
    return S;
  }

  /**
   * inputs_embeds [B, S, D] of the left-padded rows (padding positions zero, masked anyway) and the attention
   * mask [B, P + S] over the past and the rows.
   */
  private embedBatch(rows: number[][], S: number, past: KvCache): { embeds: Float32Array; mask: BigInt64Array } {
    const { vocabSize: V, hiddenSize: D } = this.spec;
    const B = rows.length;
    const P = past.length;
    const embeds = new Float32Array(B * S * D);
    const mask = new BigInt64Array(B * (P + S));
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
    return { embeds, mask };
  }

  /** Refuses a patch whose shapes do not fit a batch of B rows, or whose values are not all finite. */
  private checkPatch(patch: HeadPatch | undefined, B: number): void {
    if (!patch) return;
    const { numLayers: L, numHeads: H, headDim: d } = this.spec;
    if (patch.mask.length !== B * L * H)
      throw new ModelError(`patch.mask has ${patch.mask.length} values, expected B*L*H = ${B * L * H}`);
    if (patch.values.length !== L * H * d && patch.values.length !== B * L * H * d)
      throw new ModelError(
        `patch.values has ${patch.values.length} values, expected L*H*d = ${L * H * d} (or B*L*H*d per row)`,
      );
    if (typeof patch.mode === 'object' && (patch.mode.length !== B || patch.values.length !== B * L * H * d))
      throw new ModelError(`patch.mode: ${patch.mode.length} modes for ${B} rows (per-row modes need per-row values)`);
    assertFinite(
      patch.values,
      (i) =>
        `patch.values holds a non-finite number at layer ${Math.floor(i / (H * d)) % L}, ` +
        `head ${Math.floor(i / d) % H} (a criterion file or mean with NaN/Inf?)`,
    );
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
      for (let axis = 0; axis < 3; axis++)
        for (let s = 0; s < n; s++)
          ids[(axis * B + b) * S + offset + s] = BigInt(P + delta + local.positions[axis * n + s]!);
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
    const any = images?.some((rowImages) => rowImages && rowImages.length > 0) ?? false;
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
            `image ${i} of row ${b}: ${img.embeds.length} feature values ` +
              `are not whole rows of the hidden size ${D}`,
          );
        if (!Number.isInteger(img.start) || img.start < 0 || img.start + n > row.length) {
          throw new ModelError(
            `image ${i} of row ${b}: its ${n} rows from index ${img.start} do not fit the row's ${row.length} tokens`,
          );
        }
        embeds.set(img.embeds, (b * S + offset + img.start) * D);
        if (!deepstack) return;
        const features = img.deepstack;
        if (!features || features.length !== k || features.some((f) => f.length !== img.embeds.length)) {
          throw new ModelError(
            `image ${i} of row ${b}: this model adds ${k} DeepStack feature sets of [${n}, ${D}] ` +
              '(ImageEmbeds.deepstack)',
          );
        }
        features.forEach((f, j) => deepstack.data.set(f, ((j * B + b) * S + offset + img.start) * D));
      });
    });
    return deepstack;
  }
}

/** What a session run computes besides the standard outputs. */
interface RunOptions {
  patch?: HeadPatch;
  /** Also fetch the keys and values of the new positions (to extend a KV cache). */
  withKv?: boolean;
  images?: RowImages;
  /** Graph outputs beyond the standard ones, by name (forwardSites). */
  sites?: readonly string[];
}

interface RunResult {
  logits: Float32Array; // [B, V]
  logSumExp: Float32Array; // [B]
  heads: Float32Array; // [B, L, H, d]
  /** withKv on a host-cache decoder: per layer [1, KV, S, d]. */
  newKeys?: Float32Array[];
  newValues?: Float32Array[];
  /** withKv on a device-cache decoder: the whole extended cache, on the GPU. */
  deviceKv?: DeviceKv;
  /** Each row's M-RoPE position delta after it. */
  positionDeltas: number[];
  sites: Map<string, Float32Array>;
}

/** config.json of a checkpoint folder: its path, its text (hashed for the model's identity) and its JSON. */
interface ConfigFile {
  file: string;
  text: string;
  json: Record<string, unknown>;
}

function readConfig(modelDir: string): ConfigFile {
  const file = path.join(modelDir, 'config.json');
  const text = readUtf8File(file, 'a Hugging Face config.json');
  try {
    return { file, text, json: JSON.parse(text) };
  } catch (e) {
    throw new ModelError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

/**
 * The checkpoint's language model: its safetensors, read under text-model names for an image-text checkpoint
 * (the vision tower is VisionTower's). The caller closes it.
 */
function openLanguageModel(spec: ModelSpec, modelDir: string): SafetensorsCheckpoint {
  const ckpt = SafetensorsCheckpoint.open(modelDir);
  if (!spec.imageText) return ckpt;
  try {
    const spelling = languageModelSpelling(spec, ckpt.names(), modelDir);
    return ckpt.renamed((stored) => textWeightName(spelling, stored));
  } catch (e) {
    ckpt.close(); // an unknown or colliding spelling must not leak the shards' file descriptors
    throw e;
  }
}

/** The graph cache entry a load runs: its folder, whether this load built it, and what it was built from. */
interface BuiltEntry {
  dir: string;
  built: boolean;
  weightsFingerprint: string;
  format: WeightFormat;
}

/** Where a load's checkpoint comes from and where its cache entry goes. */
interface LoadSource {
  /** As the caller named it (for messages). */
  model: string;
  modelDir: string;
  config: ConfigFile;
  cacheDir: string;
}

/**
 * Resolves the weight format, checks the checkpoint against the spec, and builds the cache entry unless it is
 * there (a GPTQ format calibrating first).
 */
async function buildCacheEntry(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  source: LoadSource,
  opts: LoadOptions,
): Promise<BuiltEntry> {
  const { config, cacheDir } = source;
  const prequant = prequantSchemeFromConfig(config.json, config.file);
  const device = opts.device ?? 'cpu';
  if (opts.dtype === 'fp16') {
    const problem = await halfPrecisionProblem(device);
    if (problem) throw new ModelError(problem);
  }
  // MatMulIntegerToFloat (rowwise W8A8) is a CPU kernel: a GPU runs int8 as block-wise MatMulNBits.
  if (device !== 'cpu' && opts.int8Kernel === 'rowwise')
    throw new ModelError(
      `--int8-kernel rowwise (MatMulIntegerToFloat) runs on the CPU only; on --device ${device} use blockwise`,
    );
  const gpu = device === 'cpu' ? undefined : await gpuSupport(device, opts.dtype === undefined && !prequant);
  const format = resolveWeightFormat(spec, prequant, {
    dtype: opts.dtype,
    gpu,
    blockSize: opts.blockSize,
    accuracyLevel: opts.accuracyLevel,
    int8Kernel: opts.int8Kernel,
    int4Method: opts.int4Method,
    gptqCalibration: opts.gptqCalibration,
    ...(device === 'cpu' ? {} : { int8DotProduct: false }), // the default int8 kernel: blockwise
  });
  if (gpu && opts.dtype === undefined && !opts.quiet) {
    const { why } = defaultDType(spec, prequant, gpu);
    process.stderr.write(`weights: ${describeWeightFormat(format)}; ${why}\n`);
  }
  validateCheckpoint(spec, ckpt, prequant);
  const weightsFingerprint = weightsContentHash(ckpt.files, contentHashDir(cacheDir));
  const attention = attentionLayout(device);
  const key = cacheKey(config.text, weightsFingerprint, opts.headChunkBytes, format, attention);
  // A GPTQ build needs its calibration inputs first (an async model run); a built entry needs nothing.
  const gptq = format.quant?.gptq;
  const hessians =
    gptq && !cachedModelExists(cacheDir, key) ? await gptqHessians(spec, ckpt, gptq, source, opts) : undefined;
  const entry = ensureCachedModel(spec, ckpt, {
    key,
    cacheDir,
    onProgress: opts.onBuildProgress,
    headChunkBytes: opts.headChunkBytes,
    format,
    threads: opts.threads,
    hessians,
    attention,
  });
  return { ...entry, weightsFingerprint, format };
}

/**
 * What a GPU device runs, for the default dtype: fp16 shaders unless a probe (halfPrecisionProblem) finds none; CUDA
 * always has them. Only probed when the default is wanted (`probe`). A WebGPU device without an adapter is an
 * error here, before a cache entry is built in a format chosen for it.
 */
async function gpuSupport(device: Device, probe: boolean): Promise<GpuSupport> {
  if (!probe || device !== 'webgpu') return { halfPrecision: true };
  const missing = await deviceProblem(device);
  if (missing) throw new ModelError(missing);
  return { halfPrecision: (await halfPrecisionProblem(device)) === null };
}

/**
 * GPTQ's calibration inputs (quant/calibration.ts) from the checkpoint's fp32 calibration model, written beside
 * the cache entries and run as a Decoder; refused up front where it would not fit in memory.
 */
async function gptqHessians(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  cal: GptqCalibration,
  source: LoadSource,
  opts: Pick<LoadOptions, 'threads' | 'onBuildProgress'>,
): Promise<Map<string, Float64Array>> {
  // Refuse up front what would run out of memory hours later (a 7B model: ~30 GB fp32 + ~40 GB of Xᵀ X).
  const tokens = Math.min(cal.tokens, spec.maxPositions);
  const need = calibrationBytes(spec, gptqLinears(spec), parameterCount(spec), tokens);
  if (need > 0.8 * os.totalmem()) {
    throw new ModelError(
      `--int4-method gptq: calibrating ${source.model} would hold ~${(need / 2 ** 30).toFixed(1)} GiB ` +
        "(an fp32 copy of the model, each 4-bit layer's float64 input covariance, and working arrays), " +
        `more than this machine's ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB allows; use --int4-method rtn, ` +
        'or a published AWQ/GPTQ checkpoint of the model, which loads as it is',
    );
  }
  const workDir = graphsDir(source.cacheDir);
  fs.mkdirSync(workDir, { recursive: true });
  return calibrationHessians<KvCache>(spec, gptqLinears(spec), cal, {
    workDir,
    open: async (dir, sites) => {
      writeCalibrationModel(spec, ckpt, dir, sites);
      const d = await Decoder.openWritten(spec, dir, { modelDir: source.modelDir, threads: opts.threads });
      return {
        empty: emptyKv(spec),
        extend: (past, ids) => d.extend(past, ids),
        forwardSites: (rows, siteNames) => d.forwardSites(rows, siteNames),
        dispose: () => d.dispose(),
      };
    },
    onProgress: opts.onBuildProgress,
  });
}

function assertFinite(x: Float32Array, message: (index: number) => string): void {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new ModelError(message(i));
}

/** patch_values [R, L, H, d] and patch_replace [R]: R = 1 for a patch shared by every row, else one per row. */
function patchFeeds(patch: HeadPatch | undefined, spec: ModelSpec): Record<string, ort.Tensor> {
  const { numLayers: L, numHeads: H, headDim: d } = spec;
  const values = patch?.values ?? new Float32Array(L * H * d);
  const R = values.length / (L * H * d);
  const mode = patch?.mode ?? 'replace';
  const modeOf = (r: number): PatchMode => (typeof mode === 'string' ? mode : mode[r]!);
  const replace = Float32Array.from({ length: R }, (_, r) => (modeOf(r) === 'add' ? 0 : 1));
  return {
    [INPUT.patchValues]: new ort.Tensor('float32', values, [R, L, H, d]),
    [INPUT.patchReplace]: new ort.Tensor('float32', replace, [R]),
  };
}

/** Frees a device cache's GPU memory now, not when the GC takes it (a no-op for a JS cache); it cannot run again. */
export function disposeKv(kv: KvCache): void {
  kv.device?.dispose();
}

/** The KV cache's place on `device`: 'device' only where onnxruntime-node keeps outputs on it (WebGPU). */
function kvPlace(device: Device, asked: KvPlace | undefined): KvPlace {
  if (asked === 'device' && device !== 'webgpu')
    throw new ModelError(`kvCache 'device' needs --device webgpu (onnxruntime-node keeps no ${device} outputs)`);
  return asked ?? (device === 'webgpu' ? 'device' : 'host');
}

/** Every output a device cache is made of (new.* after an empty past, present.* after a past). */
function deviceKvOutputs(spec: ModelSpec): string[] {
  return Array.from({ length: spec.numLayers }, (_, l) => [
    OUTPUT.newKey(l),
    OUTPUT.newValue(l),
    OUTPUT.presentKey(l),
    OUTPUT.presentValue(l),
  ]).flat();
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
