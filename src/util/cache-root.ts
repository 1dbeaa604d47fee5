/**
 * Where this package keeps what it builds and downloads: one cache root for everything, shared by the hub
 * downloads (model/checkpoint/hub.ts), the content-hash memos (model/checkpoint/file-hash.ts), the decoder and
 * vision graph caches (model/cache/) and dataset downloads (data/hub-dataset.ts). Under the root:
 *   hub/<owner>--<name>/<revision>/            model snapshots; hub/datasets/… for datasets
 *   hashes/<sha256 of a path>.json             one memoised content sha256 per checkpoint file
 *   graphs/<key>/                              decoder graphs (model.onnx, weights.bin, layout.json)
 *   vision-graphs/<key>/                       vision tower graphs (vision.onnx, vision-weights.bin)
 * Kept in util/ rather than model/cache/ because the lowest layers (checkpoint/, data/) need it too, and they
 * must not depend on the graph cache.
 */
import os from 'node:os';
import path from 'node:path';

/** `$ARM_CACHE_DIR`, else `$XDG_CACHE_HOME` or `~/.cache`, `/activation-rm`. */
export function defaultCacheDir(): string {
  return (
    process.env.ARM_CACHE_DIR ??
    path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'activation-rm')
  );
}

/** The folder of content-hash memos under a cache root (checkpoint/file-hash.ts). */
export function contentHashDir(cacheDir: string): string {
  return path.join(cacheDir, 'hashes');
}
