/**
 * Where this package keeps what it builds and downloads. Models and datasets from the hub go where Python's
 * huggingface_hub keeps them (hfHubCacheDir: one copy on disk for both, model/checkpoint/hf-cache.ts). Everything
 * of our own has one cache root, shared by the content-hash memos (model/checkpoint/file-hash.ts) and the decoder
 * and vision graph caches (model/cache/). Under the root:
 *   hub/[datasets/]<owner>--<name>/<revision>/ model snapshots and dataset files of earlier versions (read only)
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

/**
 * The Hugging Face hub cache, chosen as huggingface_hub chooses it: `$HF_HUB_CACHE`, else the older
 * `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, where HF_HOME defaults to `$XDG_CACHE_HOME/huggingface` or
 * `~/.cache/huggingface`. A leading `~` is the home folder, as Python's expanduser reads it.
 */
export function hfHubCacheDir(): string {
  const explicit = envSet('HF_HUB_CACHE') ?? envSet('HUGGINGFACE_HUB_CACHE');
  return explicit ? expandHome(explicit) : path.join(hfHome(), 'hub');
}

/**
 * Where `huggingface-cli login` saved its token, as huggingface_hub reads it: `$HF_TOKEN_PATH`, else
 * `$HF_HOME/token`.
 */
export function hfTokenPath(): string {
  const explicit = envSet('HF_TOKEN_PATH');
  return explicit ? expandHome(explicit) : path.join(hfHome(), 'token');
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`. */
function hfHome(): string {
  const home = envSet('HF_HOME');
  if (home) return expandHome(home);
  return path.join(envSet('XDG_CACHE_HOME') ?? path.join(os.homedir(), '.cache'), 'huggingface');
}

/** An environment variable's value; unset when empty. */
function envSet(name: string): string | undefined {
  return process.env[name] || undefined;
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/** The folder of content-hash memos under a cache root (checkpoint/file-hash.ts). */
export function contentHashDir(cacheDir: string): string {
  return path.join(cacheDir, 'hashes');
}
