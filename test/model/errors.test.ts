/** Bad checkpoints and bad requests fail fast with an error that names the file. */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { ModelError } from '../../src/model/errors.js';
import { SafetensorsCheckpoint, writeSafetensors } from '../../src/model/checkpoint/safetensors.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';

const cacheDir = tempDir('arm-cache-');
const config = FAMILY_CONFIGS['llama (GQA 2, tied)']!;
const load = (dir: string) => Decoder.load(dir, { cacheDir, threads: 1 });

function checkpoint(): string {
  return makeCheckpoint(config, { seed: 1 }).dir;
}

/** Rewrites the safetensors header with `edit` (keeping the data bytes). */
function editHeader(file: string, edit: (h: Record<string, any>) => void): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
}

describe('bad checkpoints', () => {
  it('missing safetensors', async () => {
    const dir = checkpoint();
    fs.rmSync(path.join(dir, 'model.safetensors'));
    await expect(load(dir)).rejects.toThrow(new RegExp(`${dir}: no model.safetensors`));
  });

  it('corrupt safetensors (garbage bytes)', async () => {
    const dir = checkpoint();
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.alloc(4096, 0xab));
    await expect(load(dir)).rejects.toThrow(/model\.safetensors: header length \d+ exceeds the file/);
  });

  it('truncated safetensors (header promises more data than the file has)', async () => {
    const dir = checkpoint();
    const file = path.join(dir, 'model.safetensors');
    fs.truncateSync(file, fs.statSync(file).size - 100);
    await expect(load(dir)).rejects.toThrow(
      /model\.safetensors: tensor ".*": data_offsets end \d+ lies past the end of the file/,
    );
  });

  it('header lying about a tensor size', async () => {
    const dir = checkpoint();
    editHeader(path.join(dir, 'model.safetensors'), (h) => {
      h['model.norm.weight'].shape = [33];
    });
    await expect(load(dir)).rejects.toThrow(
      /tensor "model\.norm\.weight": data_offsets span 128 bytes but shape \[33\] of F32 needs 132/,
    );
  });

  it('a tensor with the wrong shape for config.json', async () => {
    const dir = checkpoint();
    editHeader(path.join(dir, 'model.safetensors'), (h) => {
      h['model.norm.weight'].shape = [2, 16];
    });
    await expect(load(dir)).rejects.toThrow(
      /tensor "model\.norm\.weight" has shape \[2,16\] but config\.json implies \[32\]/,
    );
  });

  it('a missing tensor', async () => {
    const dir = checkpoint();
    // Rewritten without the tensor (deleting only its header entry would leave a hole, a different error).
    const file = path.join(dir, 'model.safetensors');
    const ckpt = SafetensorsCheckpoint.openFile(file);
    const kept = ckpt
      .names()
      .filter((n) => n !== 'model.layers.1.mlp.up_proj.weight')
      .map((name) => {
        const data = ckpt.readFloat32(name);
        return {
          name,
          shape: ckpt.info(name).shape,
          dtype: 'F32' as const,
          bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        };
      });
    ckpt.close();
    writeSafetensors(file, kept);
    await expect(load(dir)).rejects.toThrow(/tensor "model\.layers\.1\.mlp\.up_proj\.weight" is missing/);
  });

  it('an unsupported dtype', async () => {
    const dir = checkpoint();
    editHeader(path.join(dir, 'model.safetensors'), (h) => {
      h['model.norm.weight'].dtype = 'I8';
    });
    await expect(load(dir)).rejects.toThrow(/dtype I8 is not supported/);
  });

  it('unknown architecture lists the supported ones', async () => {
    const dir = checkpoint();
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'gpt2' }));
    await expect(load(dir)).rejects.toThrow(
      /config\.json: model_type "gpt2" is not supported; supported: llama, mistral, qwen2, qwen3/,
    );
  });

  it('config.json that is not JSON', async () => {
    const dir = checkpoint();
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": ');
    await expect(load(dir)).rejects.toThrow(/config\.json: not valid JSON/);
  });

  it('missing tokenizer: the model runs on token ids, and text fails naming the file', async () => {
    const dir = checkpoint();
    fs.rmSync(path.join(dir, 'tokenizer.json'));
    const decoder = await load(dir);
    try {
      expect(decoder.hasTokenizer).toBe(false);
      expect((await decoder.forward([[1, 5, 9]])).logits.length).toBe(config.vocab_size);
      expect(() => decoder.encodePrompt('hello')).toThrow(ModelError);
      expect(() => decoder.encodePrompt('hello')).toThrow(
        new RegExp(`${dir}/tokenizer\\.json: missing, so this checkpoint runs on token ids only`),
      );
    } finally {
      await decoder.dispose();
    }
  });

  it('errors are ModelErrors and a failed build leaves no cache entry behind', async () => {
    const dir = checkpoint();
    const cache = tempDir('arm-cache-');
    editHeader(path.join(dir, 'model.safetensors'), (h) => {
      delete h['model.norm.weight'];
    });
    await expect(Decoder.load(dir, { cacheDir: cache })).rejects.toBeInstanceOf(ModelError);
    const graphs = path.join(cache, 'graphs');
    expect(fs.existsSync(graphs) ? fs.readdirSync(graphs) : []).toEqual([]);
  });
});

describe('bad requests', () => {
  it('token ids outside the vocabulary and over-long inputs', async () => {
    const decoder = await load(checkpoint());
    try {
      await expect(decoder.forward([[1, 600]])).rejects.toThrow(/token id 600 is outside the vocabulary/);
      await expect(decoder.forward([Array(200).fill(5)])).rejects.toThrow(/exceeds the model's 128 positions/);
    } finally {
      await decoder.dispose();
    }
  });
});
