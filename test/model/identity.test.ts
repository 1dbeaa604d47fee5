/**
 * A model's identity is the full content of its weights: an edit anywhere in a shard gives a new graph cache
 * entry and a new fingerprint (which criterion files and eval runs are checked against); an unchanged file is
 * hashed once and then remembered by its stat.
 */
import { expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Decoder } from '../../src/model/decoder.js';
import { contentSha256, rememberContentSha256 } from '../../src/model/checkpoint/file-hash.js';
import { SafetensorsCheckpoint } from '../../src/model/checkpoint/safetensors.js';
import { makeCheckpoint, tempDir } from '../helpers/fixtures.js';

// ~10 MB, so that 32 sampled 64 KiB windows (the old fingerprint) leave most of it unread.
const config = {
  model_type: 'llama',
  hidden_size: 128,
  intermediate_size: 256,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  vocab_size: 8000,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
};

it("zeroing one head of v_proj gives a new fingerprint, a new cache entry and the edited model's numbers", async () => {
  const { dir } = makeCheckpoint(config, { seed: 3 });
  const cacheDir = tempDir('arm-cache-');
  const file = path.join(dir, 'model.safetensors');
  const size = fs.statSync(file).size;
  const d = config.hidden_size / config.num_attention_heads;
  // Pick a head whose v_proj rows lie outside every window the old sampled fingerprint read.
  const ckpt = SafetensorsCheckpoint.open(dir);
  let target: { layer: number; head: number; start: number; bytes: number } | null = null;
  const sampled = (a: number, b: number) =>
    Array.from({ length: 32 }, (_, i) => Math.floor((size * i) / 32)).some((s) => a < s + 65536 && s < b);
  for (let layer = 0; layer < config.num_hidden_layers && !target; layer++) {
    const info = ckpt.info(`model.layers.${layer}.self_attn.v_proj.weight`);
    for (let head = 0; head < config.num_key_value_heads && !target; head++) {
      const bytes = d * config.hidden_size * 4;
      const start = info.start + head * bytes;
      if (!sampled(start, start + bytes)) target = { layer, head, start, bytes };
    }
  }
  ckpt.close();
  expect(target).not.toBeNull();

  const ids = [1, 300, 301, 302, 303];
  const before = await Decoder.load(dir, { cacheDir, threads: 1 });
  const a = await before.forward([ids]);
  const fingerprintBefore = before.info.weightsFingerprint;
  const entryBefore = before.info.cacheEntry;
  await before.dispose();

  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(target!.bytes), 0, target!.bytes, target!.start);
  fs.closeSync(fd);

  const after = await Decoder.load(dir, { cacheDir, threads: 1 });
  try {
    expect(after.info.weightsFingerprint).not.toBe(fingerprintBefore);
    expect(after.info.cacheEntry).not.toBe(entryBefore);
    expect(after.info.built).toBe(true);
    const b = await after.forward([ids]);
    const { numHeads: H } = after.spec;
    const tap = (x: Float32Array, l: number, h: number) => Array.from(x.subarray((l * H + h) * d, (l * H + h + 1) * d));
    // v = 0 for that head: its attention output is exactly zero; before the edit it was not.
    expect(tap(b.heads, target!.layer, target!.head).every((v) => v === 0)).toBe(true);
    expect(tap(a.heads, target!.layer, target!.head).some((v) => v !== 0)).toBe(true);
  } finally {
    await after.dispose();
  }
});

it('hashes a file once and remembers it until the file changes', () => {
  const memo = tempDir('arm-hashes-');
  const file = path.join(tempDir(), 'w.bin');
  fs.writeFileSync(file, Buffer.from('some weights'));
  const truth = createHash('sha256').update('some weights').digest('hex');
  expect(contentSha256(file, memo)).toBe(truth);
  expect(fs.readdirSync(memo)).toHaveLength(1);
  // A remembered value is returned without reading the file (this is how hub downloads avoid a second read).
  const planted = 'ab'.repeat(32);
  rememberContentSha256(file, planted, memo);
  expect(contentSha256(file, memo)).toBe(planted);
  // Any change to the file (here its size and mtime) invalidates the memo.
  fs.appendFileSync(file, '!');
  expect(contentSha256(file, memo)).toBe(createHash('sha256').update('some weights!').digest('hex'));
});
