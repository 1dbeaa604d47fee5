/**
 * Resolves a hub id the way `--model` does, in a process of its own (hub.test.ts spawns this with
 * `node --import tsx`): argv: ref, cache folder, hub cache folder. Prints the snapshot folder on stdout and the
 * client's notes on stderr.
 */
import { resolveModelDir } from '../../src/model/checkpoint/hub.js';

const [ref, cacheDir, hubCacheDir] = process.argv.slice(2);
const dir = await resolveModelDir(ref!, {
  cacheDir,
  hubCacheDir,
  quiet: true,
  connectTimeoutMs: 2000,
  idleTimeoutMs: 2000,
  retryDelayMs: 20,
  log: (line) => process.stderr.write(`${line}\n`),
});
process.stdout.write(`${dir}\n`);
