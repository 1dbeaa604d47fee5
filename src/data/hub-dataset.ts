/**
 * `--dataset owner/name[@revision]`: a hub dataset's parquet files, kept in the Hugging Face hub cache as Python's
 * huggingface_hub keeps them (`<hub cache>/datasets--<owner>--<name>/snapshots/<commit>/<path>`): a file that
 * `datasets` or `hf_hub_download` fetched is read from there offline, and one we fetch is Python's too.
 *
 * The hub serves dataset files at `<endpoint>/datasets/<id>/resolve/<revision>/<file>`; they come through the
 * same downloader as models (src/model/checkpoint/hub.ts: retries, resume, size and sha256 checks, locks,
 * HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE).
 */
import { downloadRepoFile, repoIdProblem, revisionProblemOf, splitRepoRef } from '../model/checkpoint/hub.js';
import { DataError } from './examples.js';

/** The parquet files of the datasets `arm eval` knows, per repository (the split its benchmark scores). */
const HUB_DATASET_FILES: Readonly<Record<string, readonly string[]>> = Object.freeze({
  'allenai/reward-bench-2': ['data/test-00000-of-00001.parquet'],
  'allenai/reward-bench': ['data/filtered-00000-of-00001.parquet'],
});

export interface HubDatasetOptions {
  /** Our own cache root, where earlier versions kept dataset files (still read). */
  cacheDir?: string;
  /** The Hugging Face hub cache (default: as huggingface_hub finds it, HF_HUB_CACHE / HF_HOME). */
  hubCacheDir?: string;
  revision?: string;
  quiet?: boolean;
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

/** The local paths of a hub dataset's parquet files: from the hub cache, or downloaded into it when online. */
export async function resolveHubDataset(ref: string, opts: HubDatasetOptions = {}): Promise<string[]> {
  const parsed = checkHubDatasetRef(ref, opts.revision);
  if ('problem' in parsed)
    throw new DataError(`${ref}: no such file, and not a hub dataset id (owner/name[@revision]): ${parsed.problem}`);
  const files = HUB_DATASET_FILES[parsed.id];
  if (!files) {
    throw new DataError(
      `${ref}: no such file; of hub datasets arm eval knows ${Object.keys(HUB_DATASET_FILES).join(', ')}; ` +
        `download another dataset's parquet or JSONL file and pass its path`,
    );
  }
  const out: string[] = [];
  for (const file of files) {
    const got = await downloadRepoFile(
      { repoType: 'dataset', ref: parsed.id, file },
      { ...opts, revision: parsed.revision },
    );
    if (!got) throw new DataError(`${parsed.id}@${parsed.revision}: ${file} not found on the hub`);
    out.push(got);
  }
  return out;
}
