/**
 * `--model` resolution: a local checkpoint folder as is, or a Hugging Face hub id (`owner/name[@revision]`)
 * downloaded once into the cache, file by file with a progress bar. Without network it fails fast with a
 * clear message rather than hanging.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import { ModelError } from './errors.js';
import { defaultCacheDir } from './export.js';

const REQUIRED = ['config.json', 'tokenizer.json'];
const OPTIONAL = ['tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'];
const HUB_ID = /^[\w.-]+\/[\w.-]+$/;

export interface ResolveOptions { cacheDir?: string; revision?: string; quiet?: boolean; connectTimeoutMs?: number }

export async function resolveModelDir(ref: string, opts: ResolveOptions = {}): Promise<string> {
  if (fs.existsSync(ref)) {
    if (!fs.statSync(ref).isDirectory()) throw new ModelError(`${ref}: --model must be a checkpoint folder or a hub id, not a file`);
    return path.resolve(ref);
  }
  const [id, atRevision] = ref.split('@') as [string, string | undefined];
  if (!HUB_ID.test(id)) throw new ModelError(`${ref}: no such folder, and not a hub id of the form owner/name`);
  const revision = opts.revision ?? atRevision ?? 'main';
  const dir = path.join(opts.cacheDir ?? defaultCacheDir(), 'hub', id.replace('/', '--'), revision);
  if (fs.existsSync(path.join(dir, '.complete'))) return dir;
  if (process.env.HF_HUB_OFFLINE === '1') throw new ModelError(`${id}: not in the cache (${dir}) and HF_HUB_OFFLINE=1; pass a local checkpoint folder with --model`);
  await downloadSnapshot(id, revision, dir, opts);
  return dir;
}

async function downloadSnapshot(id: string, revision: string, dir: string, opts: ResolveOptions): Promise<void> {
  const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, '');
  const headers: Record<string, string> = process.env.HF_TOKEN ? { authorization: `Bearer ${process.env.HF_TOKEN}` } : {};
  const url = (file: string) => `${endpoint}/${id}/resolve/${encodeURIComponent(revision)}/${file}`;
  const get = async (file: string): Promise<Response | null> => {
    let res: Response;
    try {
      res = await fetch(url(file), { headers, redirect: 'follow', signal: AbortSignal.timeout(opts.connectTimeoutMs ?? 15_000) });
    } catch (e) {
      const cause = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).name;
      throw new ModelError(`${id}: cannot reach ${endpoint} (${cause}); offline? pass a local checkpoint folder with --model`);
    }
    if (res.status === 404) return null;
    if (res.status === 401 || res.status === 403) throw new ModelError(`${id}: ${url(file)} answered ${res.status}; the model is gated or private (set HF_TOKEN)`);
    if (!res.ok) throw new ModelError(`${id}: ${url(file)} answered ${res.status} ${res.statusText}`);
    return res;
  };

  fs.mkdirSync(dir, { recursive: true });
  const save = async (file: string, res: Response, onBytes?: (n: number) => void) => {
    const dest = path.join(dir, file);
    const part = `${dest}.part`;
    const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
    if (onBytes) body.on('data', (chunk: Buffer) => onBytes(chunk.length));
    await pipeline(body, fs.createWriteStream(part));
    fs.renameSync(part, dest);
  };

  for (const file of [...REQUIRED, ...OPTIONAL]) {
    const res = await get(file);
    if (!res) {
      if (REQUIRED.includes(file)) throw new ModelError(`${id}@${revision}: ${file} not found on the hub`);
      continue;
    }
    await save(file, res);
  }
  let shards: string[];
  const index = await get('model.safetensors.index.json');
  if (index) {
    await save('model.safetensors.index.json', index);
    const map = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')).weight_map as Record<string, string>;
    shards = [...new Set(Object.values(map))].sort();
  } else {
    shards = ['model.safetensors'];
  }
  for (const shard of shards) {
    if (fs.existsSync(path.join(dir, shard))) continue;
    const res = await get(shard);
    if (!res) throw new ModelError(`${id}@${revision}: ${shard} not found on the hub (only safetensors checkpoints are supported)`);
    const size = Number(res.headers.get('content-length') ?? 0);
    const bar = opts.quiet ? undefined : new cliProgress.SingleBar({
      format: `${shard} {bar} {percentage}% | {mb}/{totalMb} MB | {rate} MB/s | ETA {eta_formatted}`,
    }, cliProgress.Presets.shades_classic);
    const started = Date.now();
    let received = 0;
    bar?.start(size, 0, { mb: '0', totalMb: (size / 1e6).toFixed(0), rate: '0' });
    await save(shard, res, (n) => {
      received += n;
      bar?.update(received, { mb: (received / 1e6).toFixed(0), rate: (received / 1e6 / Math.max(1e-3, (Date.now() - started) / 1000)).toFixed(1) });
    });
    bar?.stop();
  }
  fs.writeFileSync(path.join(dir, '.complete'), new Date().toISOString());
}
