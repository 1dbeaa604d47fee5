/**
 * `--dataset owner/name[@revision]`: a hub dataset's parquet files, kept in the same cache as models, under
 * `<cache>/hub/datasets/<owner>--<name>/<revision>/<path in the repository>`.
 *
 * The hub serves dataset files at `<endpoint>/datasets/<id>/resolve/<revision>/<file>`; they come through the
 * same downloader as models (src/model/checkpoint/hub.ts: retries, resume, size and sha256 checks, HF_ENDPOINT,
 * HF_TOKEN, HF_HUB_OFFLINE). A file already in the cache is read offline.
 */
import fs from 'node:fs';
import path from 'node:path';
import { defaultCacheDir } from '../util/cache-root.js';
import { downloadRepoFile, repoIdProblem, revisionProblemOf, splitRepoRef } from '../model/checkpoint/hub.js';
import { DataError } from './examples.js';

/** The parquet files of the datasets `arm eval` knows, per repository (the split its benchmark scores). */
const HUB_DATASET_FILES: Readonly<Record<string, readonly string[]>> = Object.freeze({
  'allenai/reward-bench-2': ['data/test-00000-of-00001.parquet'],
  'allenai/reward-bench': ['data/filtered-00000-of-00001.parquet'],
});

/** Fetches one repository file to `dest` (resolved inside the cache); false when the hub has no such file. */
type DatasetDownloader = (request: {
  repoType: 'dataset';
  id: string;
  revision: string;
  file: string;
  dest: string;
  url: string;
}) => Promise<boolean>;

export interface HubDatasetOptions {
  cacheDir?: string;
  revision?: string;
  download?: DatasetDownloader;
}

/**
 * `owner/name[@revision]` (`revision` overriding the ref's) under the hub client's own rules, or what is wrong with it.
 */
function checkHubDatasetRef(ref: string, revision?: string): { id: string; revision: string } | { problem: string } {
  const parsed = splitRepoRef(ref, revision);
  const idProblem = repoIdProblem(parsed.id);
  if (idProblem) return { problem: `${JSON.stringify(parsed.id)} is not a hub repo id: ${idProblem}` };
  const revisionProblem = revisionProblemOf(parsed.revision);
  if (revisionProblem)
    return {
      problem: `revision ${JSON.stringify(parsed.revision)} is not a valid branch, tag or commit: ${revisionProblem}`,
    };
  return parsed;
}

/** `owner/name[@revision]` with hub-valid parts, or null. */
export function parseHubDatasetRef(ref: string): { id: string; revision: string } | null {
  const checked = checkHubDatasetRef(ref);
  return 'problem' in checked ? null : checked;
}

function hubDatasetDir(id: string, revision: string, cacheDir?: string): string {
  return path.join(
    path.resolve(cacheDir ?? defaultCacheDir()),
    'hub',
    'datasets',
    id.replace('/', '--'),
    encodeURIComponent(revision),
  );
}

function hubDatasetUrl(id: string, revision: string, file: string): string {
  const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, '');
  const filePath = file.split('/').map(encodeURIComponent).join('/');
  return `${endpoint}/datasets/${id}/resolve/${encodeURIComponent(revision)}/${filePath}`;
}

/** The local paths of a hub dataset's parquet files: from the cache, or fetched by `download` when given and online. */
export async function resolveHubDataset(ref: string, opts: HubDatasetOptions = {}): Promise<string[]> {
  const parsed = checkHubDatasetRef(ref, opts.revision);
  if ('problem' in parsed)
    throw new DataError(`${ref}: no such file, and not a hub dataset id (owner/name[@revision]): ${parsed.problem}`);
  const { revision } = parsed;
  const files = HUB_DATASET_FILES[parsed.id];
  if (!files) {
    throw new DataError(
      `${ref}: no such file; of hub datasets arm eval knows ${Object.keys(HUB_DATASET_FILES).join(', ')}; ` +
        `download another dataset's parquet or JSONL file and pass its path`,
    );
  }
  const dir = hubDatasetDir(parsed.id, revision, opts.cacheDir);
  const out: string[] = [];
  for (const file of files) {
    const dest = path.join(dir, file);
    out.push(dest);
    if (fs.existsSync(dest)) continue;
    const url = hubDatasetUrl(parsed.id, revision, file);
    const offline = process.env.HF_HUB_OFFLINE;
    if (offline !== undefined && /^(1|true|yes|on)$/i.test(offline.trim())) {
      throw new DataError(
        `${parsed.id}@${revision}: ${file} is not in the cache (${dest}) and HF_HUB_OFFLINE=${offline}; ` +
          'pass a local parquet file with --dataset',
      );
    }
    const download: DatasetDownloader =
      opts.download ??
      (async (r) =>
        (await downloadRepoFile(
          { repoType: 'dataset', ref: r.id, file: r.file },
          { cacheDir: opts.cacheDir, revision: r.revision },
        )) !== null);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    if (!(await download({ repoType: 'dataset', id: parsed.id, revision, file, dest, url })))
      throw new DataError(`${parsed.id}@${revision}: ${file} not found on the hub (${url})`);
  }
  return out;
}
