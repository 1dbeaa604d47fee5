/** config.json that cannot be read as text: each case names the file and what was expected. */
import { expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';

const load = (dir: string) => Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
const checkpoint = () => makeCheckpoint(FAMILY_CONFIGS['llama (GQA 2, tied)']!, { seed: 2 }).dir;

it('config.json is a directory', async () => {
  const dir = checkpoint();
  const file = path.join(dir, 'config.json');
  fs.rmSync(file);
  fs.mkdirSync(file);
  await expect(load(dir)).rejects.toThrow(`${file}: is a directory, not a file; expected a Hugging Face config.json`);
});

it('config.json is missing', async () => {
  const dir = checkpoint();
  fs.rmSync(path.join(dir, 'config.json'));
  await expect(load(dir)).rejects.toThrow(
    `${path.join(dir, 'config.json')}: missing; expected a Hugging Face config.json`,
  );
});

it('config.json holds bytes that are not UTF-8 (instead of silently reading U+FFFD)', async () => {
  const dir = checkpoint();
  const file = path.join(dir, 'config.json');
  const text = fs.readFileSync(file, 'utf8').replace('"llama"', '"llama", "note": "caf\u0000"');
  fs.writeFileSync(file, Buffer.from(text.replace('\u0000', '\u00ff'), 'latin1'));
  await expect(load(dir)).rejects.toThrow(`${file}: not valid UTF-8 text; expected a Hugging Face config.json`);
});

it('model.safetensors is a directory', async () => {
  const dir = checkpoint();
  const file = path.join(dir, 'model.safetensors');
  fs.rmSync(file);
  fs.mkdirSync(file);
  await expect(load(dir)).rejects.toThrow(`${file}: is a directory; expected a safetensors file`);
});
