/**
 * A vision tower's graph on disk, cached like the decoder's (cache/decoder-cache.ts): `vision.onnx` next to
 * `vision-weights.bin` (float32 external data, linear layers transposed for MatMul and fused where the graph
 * fuses them), in `<cacheDir>/vision-graphs/<key>/`, written into a temporary folder renamed into place so a
 * killed build leaves nothing half-written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ModelError } from '../errors.js';
import { weightsContentHash } from '../checkpoint/file-hash.js';
import { ensureCacheEntry, PAGE_ALIGN, transposed } from './entry.js';
import { defaultCacheDir } from '../../util/cache-root.js';
import { checkFiniteTensor, type SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import type { ExternalRef, GraphBuilder } from '../graph/graph-builder.js';
import type { VisionWeightSource } from '../graph/vision-ops.js';

export const VISION_MODEL_FILE = 'vision.onnx';
const VISION_DATA_FILE = 'vision-weights.bin';

/** The cache root (util/cache-root.ts, shared with the decoder's graphs and the hub downloads). */
export const defaultVisionCacheDir = defaultCacheDir;

/** The weights' identity, as the decoder's: sha256 over the files' names and full contents. */
export const checkpointFingerprint = weightsContentHash;

export function visionCacheKey(
  graphVersion: string,
  specJson: string,
  weightsFingerprint: string,
  extra: string,
): string {
  return createHash('sha256')
    .update(graphVersion)
    .update('\0')
    .update(specJson)
    .update('\0')
    .update(weightsFingerprint)
    .update('\0')
    .update(extra)
    .digest('hex')
    .slice(0, 24);
}

export interface VisionBuild {
  cacheDir: string;
  key: string;
  ckpt: SafetensorsCheckpoint;
  sources: ReadonlyMap<string, VisionWeightSource>;
  /** Emits the graph; `weight(g, name)` registers graph weight `name` from `sources`. */
  emit: (weight: (g: GraphBuilder, name: string) => string) => GraphBuilder;
  doc: string;
  metadata: Record<string, string>;
}

/** Builds the cache entry if missing; returns the folder holding vision.onnx and vision-weights.bin. */
export function ensureCachedVisionModel(b: VisionBuild): { dir: string; built: boolean } {
  const dir = path.join(b.cacheDir, 'vision-graphs', b.key);
  return ensureCacheEntry(dir, [VISION_MODEL_FILE, VISION_DATA_FILE], (tmp) => writeVisionModel(b, tmp));
}

function writeVisionModel(b: VisionBuild, outDir: string): void {
  const refs = new Map<string, ExternalRef>();
  const fd = fs.openSync(path.join(outDir, VISION_DATA_FILE), 'w');
  let offset = 0;
  try {
    for (const [name, source] of b.sources) {
      const { data, dims } = produce(b.ckpt, source);
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      fs.writeSync(fd, bytes, 0, bytes.length, offset);
      refs.set(name, { name, dims, offset, length: bytes.length });
      offset = Math.ceil((offset + bytes.length) / PAGE_ALIGN) * PAGE_ALIGN;
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  const graph = b.emit((g, name) => {
    const ref = refs.get(name);
    if (!ref) throw new Error(`internal: vision graph uses weight ${name} that was not exported`);
    return g.externalWeight(ref, VISION_DATA_FILE);
  });
  fs.writeFileSync(path.join(outDir, VISION_MODEL_FILE), graph.toBytes(b.doc, b.metadata));
}

/** One checkpoint tensor, or rows [a, b) of its first axis for `name#rows:a:b`; finite values only. */
function readPart(ckpt: SafetensorsCheckpoint, spec: string): { data: Float32Array; shape: number[] } {
  const m = /^(.*)#rows:(\d+):(\d+)$/.exec(spec);
  const name = m ? m[1]! : spec;
  const info = ckpt.info(name);
  let data = ckpt.readFloat32(name);
  let shape = [...info.shape];
  if (m) {
    const [a, bEnd] = [Number(m[2]), Number(m[3])];
    const rowLen = shape.slice(1).reduce((x, y) => x * y, 1);
    if (bEnd > shape[0]!)
      throw new ModelError(`${info.file}: tensor "${name}" has ${shape[0]} rows; expected at least ${bEnd}`);
    data = data.slice(a * rowLen, bEnd * rowLen);
    shape = [bEnd - a, ...shape.slice(1)];
  }
  checkFiniteTensor(data, info.file, name);
  return { data, shape };
}

function produce(ckpt: SafetensorsCheckpoint, source: VisionWeightSource): { data: Float32Array; dims: number[] } {
  const parts = source.names.map((n) => readPart(ckpt, n));
  const total = parts.reduce((n, p) => n + p.data.length, 0);
  const joined = parts.length === 1 ? parts[0]!.data : new Float32Array(total);
  if (parts.length > 1) {
    let at = 0;
    for (const p of parts) {
      joined.set(p.data, at);
      at += p.data.length;
    }
  }
  if (source.kind === 'tensor') {
    const dims = source.dims ? [...source.dims] : parts.length === 1 ? parts[0]!.shape : [total];
    return { data: joined, dims: dims.length === 0 ? [1] : dims };
  }
  // Linear/Conv [out, in…] rows fused along out, then transposed to MatMul's [in, out].
  const cols = parts[0]!.shape.slice(1).reduce((x, y) => x * y, 1);
  for (const [i, p] of parts.entries()) {
    if (p.shape.slice(1).reduce((x, y) => x * y, 1) !== cols)
      throw new ModelError(
        `${ckpt.dir}: ${source.names[i]} has shape [${p.shape}], which cannot be fused with [${parts[0]!.shape}]`,
      );
  }
  const rows = total / cols;
  return { data: transposed(joined, rows, cols), dims: [cols, rows] };
}
