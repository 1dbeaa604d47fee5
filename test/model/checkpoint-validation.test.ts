/**
 * Malformed safetensors files, sharded indexes, config.json values and weights are refused with a
 * ModelError that names the file and what was expected, instead of being read as something else
 * (silently dropped layers, aliased tensors, NaN scores).
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { ModelError } from '../../src/model/errors.js';
import { findDuplicateKey, SafetensorsCheckpoint, writeSafetensors } from '../../src/model/checkpoint/safetensors.js';
import { specFromConfig } from '../../src/model/families/config.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';

const cacheDir = tempDir('arm-cache-');
const config = FAMILY_CONFIGS['llama (GQA 2, tied)']!;
const load = (dir: string, cache = cacheDir) => Decoder.load(dir, { cacheDir: cache, threads: 1 });

/**
 * An independent minimal safetensors writer: `header` is the JSON text exactly as it should appear (so
 * duplicate keys survive), followed by `dataBytes` bytes of data.
 */
function rawSafetensors(header: string, dataBytes: number): string {
  const file = path.join(tempDir('arm-st-'), 'model.safetensors');
  const json = Buffer.from(header);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
  return file;
}

/** `{"name": {"dtype": "F32", "shape": [n], "data_offsets": [b, e]}, ...}` with n = (e − b) / 4. */
function header(entries: [string, number, number][], extra = ''): string {
  const parts = entries.map(
    ([name, b, e]) => `${JSON.stringify(name)}:{"dtype":"F32","shape":[${(e - b) / 4}],"data_offsets":[${b},${e}]}`,
  );
  return `{${[extra, ...parts].filter(Boolean).join(',')}}`;
}

const open = (file: string) => () => SafetensorsCheckpoint.openFile(file).close();

describe('safetensors data section (reference rule: sorted by offset, contiguous from 0 to the end)', () => {
  it('a well-formed hand-written file opens, tensors in any header order', () => {
    const file = rawSafetensors(
      header([
        ['b', 8, 24],
        ['a', 0, 8],
        ['empty', 24, 24],
      ]),
      24,
    );
    const ckpt = SafetensorsCheckpoint.openFile(file);
    expect(ckpt.names().sort()).toEqual(['a', 'b', 'empty']);
    expect(ckpt.readFloat32('b')).toHaveLength(4);
    ckpt.close();
  });

  it('overlapping data offsets', () => {
    const file = rawSafetensors(
      header([
        ['a', 0, 16],
        ['b', 8, 24],
      ]),
      24,
    );
    expect(open(file)).toThrow(ModelError);
    expect(open(file)).toThrow(/model\.safetensors: tensor "b" data_offsets \[8, 24\] overlap tensor "a" \[0, 16\]/);
  });

  it('two tensors on the same bytes', () => {
    const file = rawSafetensors(
      header([
        ['a', 0, 8],
        ['b', 0, 8],
      ]),
      8,
    );
    expect(open(file)).toThrow(/model\.safetensors: tensor "(a|b)" data_offsets \[0, 8\] overlap tensor "(a|b)"/);
  });

  it('a hole between tensors', () => {
    const file = rawSafetensors(
      header([
        ['a', 0, 8],
        ['b', 16, 24],
      ]),
      24,
    );
    expect(open(file)).toThrow(
      new RegExp(
        String.raw`model\.safetensors: tensor "b" data_offsets \[16, 24\] leave a hole: tensor "a" ends at 8; ` +
          String.raw`tensors must be contiguous`,
      ),
    );
  });

  it('a hole before the first tensor', () => {
    const file = rawSafetensors(header([['a', 8, 16]]), 16);
    expect(open(file)).toThrow(/tensor "a" data_offsets \[8, 16\] leave a hole: the data section starts at 0/);
  });

  it('trailing bytes after the last tensor', () => {
    const file = rawSafetensors(header([['a', 0, 8]]), 12);
    expect(open(file)).toThrow(
      new RegExp(
        String.raw`model\.safetensors: the tensors end at data offset 8 but the data section holds 12 bytes; ` +
          String.raw`.*\(4 trailing bytes\)`,
      ),
    );
  });

  it('a header with no tensors must have no data', () => {
    expect(open(rawSafetensors('{}', 0))).not.toThrow();
    expect(open(rawSafetensors('{}', 8))).toThrow(/tensors end at data offset 0 but the data section holds 8 bytes/);
  });

  it('offsets beyond the safe integer range', () => {
    const file = rawSafetensors(
      '{"a":{"dtype":"F32","shape":[2],"data_offsets":[9007199254740993,9007199254741001]}}',
      8,
    );
    expect(open(file)).toThrow(/tensor "a": field "data_offsets" must be \[begin, end\]/);
  });
});

describe('safetensors header keys and metadata', () => {
  it('a tensor named twice (JSON.parse alone would keep only the last)', () => {
    // Both entries are self-consistent, so only the duplicate check can catch this.
    const file = rawSafetensors(
      header([
        ['a', 0, 8],
        ['a', 0, 8],
      ]),
      8,
    );
    expect(open(file)).toThrow(/model\.safetensors: header names "a" twice; every tensor must appear once/);
  });

  it('a duplicate spelled with an escape', () => {
    const file = rawSafetensors(
      header([['a', 0, 8]]).replace(/}$/, ',"\\u0061":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'),
      8,
    );
    expect(open(file)).toThrow(/header names "a" twice/);
  });

  it('a field repeated inside a tensor entry', () => {
    const file = rawSafetensors('{"a":{"dtype":"F16","shape":[2],"dtype":"F32","data_offsets":[0,8]}}', 8);
    expect(open(file)).toThrow(/model\.safetensors: header entry "a" has field "dtype" twice/);
  });

  it('findDuplicateKey is not fooled by braces, commas, quotes or equal values inside strings and arrays', () => {
    expect(findDuplicateKey('{"a":"{\\"a\\":1,","b":["a","a",{"a":1},{"a":2}],"c":{"x":"a","y":"a"}}')).toBeNull();
    expect(findDuplicateKey('{"a":1,"b":{"c":1,"c":2}}')).toEqual({ key: 'c', parent: 'b' });
    expect(findDuplicateKey('[{"k":1},{"k":2},{"k":3,"k":4}]')).toEqual({ key: 'k', parent: null });
  });

  it('__metadata__ must be a string → string map', () => {
    const h = (meta: string) => header([['a', 0, 8]], `"__metadata__":${meta}`);
    expect(open(rawSafetensors(h('{"format":"pt"}'), 8))).not.toThrow();
    expect(open(rawSafetensors(h('null'), 8))).not.toThrow();
    expect(open(rawSafetensors(h('{"format":1}'), 8))).toThrow(
      /model\.safetensors: "__metadata__" field "format" must be a string, got number 1/,
    );
    expect(open(rawSafetensors(h('"pt"'), 8))).toThrow(
      /model\.safetensors: "__metadata__" must be an object of string → string, got string "pt"/,
    );
    expect(open(rawSafetensors(h('["pt"]'), 8))).toThrow(/"__metadata__" must be an object .*got an array/);
  });

  it('a tensor entry that is not an object', () => {
    expect(open(rawSafetensors('{"a":null}', 0))).toThrow(
      /model\.safetensors: tensor "a": expected an object with dtype, shape and data_offsets, got null/,
    );
  });

  it('a header that is not UTF-8', () => {
    const file = rawSafetensors('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8);
    const buf = fs.readFileSync(file);
    buf[11] = 0xff; // inside the key "a"
    fs.writeFileSync(file, buf);
    expect(open(file)).toThrow(/model\.safetensors: header is not valid UTF-8/);
  });

  it('writeSafetensors produces files the strict reader accepts (empty tensors and metadata included)', () => {
    const file = path.join(tempDir('arm-st-'), 'x.safetensors');
    writeSafetensors(
      file,
      [
        { name: 'w', shape: [3], dtype: 'F32', bytes: new Uint8Array(new Float32Array([1, 2, 3]).buffer) },
        { name: 'e', shape: [0, 4], dtype: 'F16', bytes: new Uint8Array(0) },
        { name: 'h', shape: [1], dtype: 'BF16', bytes: new Uint8Array(2) },
      ],
      { note: 'x' },
    );
    const ckpt = SafetensorsCheckpoint.openFile(file);
    expect(ckpt.metadata).toEqual({ format: 'pt', note: 'x' });
    expect([...ckpt.readFloat32('w')]).toEqual([1, 2, 3]);
    ckpt.close();
  });
});

describe('sharded index', () => {
  const sharded = () => {
    const { dir } = makeCheckpoint(config, { seed: 2, shards: 2 });
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    const rewrite = (edit: (m: Record<string, string>) => void) => {
      edit(index.weight_map);
      fs.writeFileSync(indexPath, JSON.stringify(index));
    };
    return { dir, weightMap: index.weight_map, rewrite };
  };
  const openDir = (dir: string) => () => SafetensorsCheckpoint.open(dir).close();

  it('a valid sharded checkpoint opens', () => {
    const { dir, weightMap } = sharded();
    const ckpt = SafetensorsCheckpoint.open(dir);
    expect(ckpt.names().sort()).toEqual(Object.keys(weightMap).sort());
    expect(ckpt.files).toHaveLength(2);
    ckpt.close();
  });

  it('a shard path escaping the model folder with ..', () => {
    const { dir, rewrite } = sharded();
    // The escaped-to file exists and is a valid safetensors file: only the path check stands in the way.
    const outside = `../${path.basename(dir)}-x.safetensors`;
    fs.copyFileSync(path.join(dir, 'model-00001-of-00002.safetensors'), path.join(dir, outside));
    rewrite((m) => {
      m['model.norm.weight'] = outside;
    });
    expect(openDir(dir)).toThrow(ModelError);
    expect(openDir(dir)).toThrow(
      new RegExp(
        String.raw`model\.safetensors\.index\.json: weight_map puts tensor "model\.norm\.weight" in ` +
          String.raw`"\.\.\/arm-ckpt-\w+-x\.safetensors", which is outside the model folder`,
      ),
    );
    fs.rmSync(path.join(dir, outside));
  });

  it('an absolute shard path, even one pointing into the folder', () => {
    const { dir, rewrite } = sharded();
    rewrite((m) => {
      m['model.norm.weight'] = path.join(dir, 'model-00001-of-00002.safetensors');
    });
    expect(openDir(dir)).toThrow(
      new RegExp(
        String.raw`weight_map puts tensor "model\.norm\.weight" in ".*", which is outside the model ` +
          String.raw`folder.*relative paths inside it`,
      ),
    );
  });

  it('a shard path that is the folder itself or not a string', () => {
    const { dir, rewrite } = sharded();
    rewrite((m) => {
      m['model.norm.weight'] = 'sub/../';
    });
    expect(openDir(dir)).toThrow(/outside the model folder/);
    rewrite((m) => {
      (m as Record<string, unknown>)['model.norm.weight'] = 3;
    });
    expect(openDir(dir)).toThrow(/weight_map entry for tensor "model\.norm\.weight" must be a shard file name, got 3/);
  });

  it('the index names a tensor in a shard that does not hold it', () => {
    const { dir, weightMap, rewrite } = sharded();
    const name = Object.keys(weightMap).find((n) => weightMap[n] === 'model-00002-of-00002.safetensors')!;
    rewrite((m) => {
      m[name] = 'model-00001-of-00002.safetensors';
    });
    expect(openDir(dir)).toThrow(
      new RegExp(
        `index\\.json: weight_map puts tensor "${name.replaceAll('.', '\\.')}" in ` +
          `"model-00001-of-00002\\.safetensors", but it is in "model-00002-of-00002\\.safetensors"`,
      ),
    );
  });

  it('the index names a tensor no shard holds', () => {
    const { dir, rewrite } = sharded();
    rewrite((m) => {
      m['model.extra.weight'] = 'model-00001-of-00002.safetensors';
    });
    expect(openDir(dir)).toThrow(
      /weight_map puts tensor "model\.extra\.weight" in "model-00001-of-00002\.safetensors", but no shard holds it/,
    );
  });

  it('an index that is not an object, or whose weight_map is not', () => {
    const { dir } = sharded();
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    fs.writeFileSync(indexPath, 'null');
    expect(openDir(dir)).toThrow(/model\.safetensors\.index\.json: expected a JSON object, got null/);
    fs.writeFileSync(indexPath, '{"weight_map":["model-00001-of-00002.safetensors"]}');
    expect(openDir(dir)).toThrow(/field "weight_map" must be an object of tensor name → shard file, got an array/);
    fs.writeFileSync(
      indexPath,
      '{"weight_map":{"model.norm.weight":"model-00001-of-00002.safetensors",' +
        '"model.norm.weight":"model-00002-of-00002.safetensors"}}',
    );
    expect(openDir(dir)).toThrow(/index\.json: key "model\.norm\.weight" appears twice inside "weight_map"/);
  });
});

describe('config.json values', () => {
  const FILE = '/m/config.json';
  const spec = (edit: Record<string, unknown>) => () => specFromConfig({ ...config, ...edit }, FILE);
  const at = (field: string) => new RegExp(`^/m/config\\.json: field "${field.replaceAll('.', '\\.')}"`);

  it('every fixture config still parses', () => {
    for (const c of Object.values(FAMILY_CONFIGS)) expect(() => specFromConfig(c, FILE)).not.toThrow();
  });

  it('a config that is not a JSON object', () => {
    expect(() => specFromConfig(null, FILE)).toThrow(/^\/m\/config\.json: expected a JSON object, got null$/);
    expect(() => specFromConfig([config], FILE)).toThrow(/expected a JSON object, got an array/);
    expect(() => specFromConfig(7, FILE)).toThrow(/expected a JSON object, got number 7/);
  });

  it('model_type missing, or a name that is not a family (not even an Object.prototype key)', () => {
    expect(spec({ model_type: undefined })).toThrow(/^\/m\/config\.json: field "model_type" is missing$/);
    expect(spec({ model_type: 'toString' })).toThrow(/model_type "toString" is not supported; supported: llama/);
    expect(spec({ model_type: 3 })).toThrow(/model_type 3 is not supported/);
  });

  it('rms_norm_eps must be a positive finite number', () => {
    for (const v of [-1, 0, '1e-5', true]) {
      expect(spec({ rms_norm_eps: v })).toThrow(
        new RegExp(`${at('rms_norm_eps').source} must be a positive finite number, got ${JSON.stringify(v)}`),
      );
    }
    expect(specFromConfig({ ...config, rms_norm_eps: undefined }, FILE).rmsNormEps).toBe(1e-6);
  });

  it.each([
    'hidden_size',
    'intermediate_size',
    'num_hidden_layers',
    'num_attention_heads',
    'num_key_value_heads',
    'vocab_size',
    'max_position_embeddings',
    'head_dim',
  ])('%s must be a positive integer', (field) => {
    for (const v of [0, -4, 2.5, '8', [8]]) {
      expect(spec({ [field]: v })).toThrow(
        new RegExp(
          `${at(field).source} must be a positive integer, got ${JSON.stringify(v).replace(/[[\]]/g, '\\$&')}`,
        ),
      );
    }
  });

  it('a missing required field is named, not a TypeError', () => {
    for (const field of [
      'hidden_size',
      'intermediate_size',
      'num_hidden_layers',
      'num_attention_heads',
      'vocab_size',
    ]) {
      expect(spec({ [field]: undefined })).toThrow(new RegExp(`${at(field).source} is missing$`));
    }
  });

  it('head_dim derived from a hidden_size not divisible by the heads', () => {
    expect(spec({ hidden_size: 30 })).toThrow(
      /head_dim 7\.5 \(hidden_size 30 \/ num_attention_heads 4, as "head_dim" is absent\) must be an even integer/,
    );
  });

  it('rope_scaling / rope_parameters must be objects or null', () => {
    expect(spec({ rope_scaling: 'linear' })).toThrow(
      /^\/m\/config\.json: field "rope_scaling" must be an object or null, got string "linear"/,
    );
    expect(spec({ rope_parameters: [1] })).toThrow(/field "rope_parameters" must be an object or null, got an array/);
    expect(spec({ rope_scaling: 2 })).toThrow(/field "rope_scaling" must be an object or null, got number 2/);
    expect(specFromConfig({ ...config, rope_scaling: null, rope_parameters: null }, FILE).rope.type).toBe('default');
  });

  it('rope theta and scaling factors must be positive', () => {
    expect(spec({ rope_theta: 0 })).toThrow(/field "rope_theta" must be a positive finite number, got 0/);
    expect(spec({ rope_theta: '10000' })).toThrow(/field "rope_theta" must be a positive finite number, got "10000"/);
    expect(spec({ rope_parameters: { rope_type: 'default', rope_theta: -5 } })).toThrow(
      /field "rope_parameters\.rope_theta" must be a positive finite number, got -5/,
    );
    for (const key of ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings']) {
      expect(spec({ rope_scaling: { rope_type: 'llama3', factor: 8, [key]: -1 } })).toThrow(
        new RegExp(`field "rope_scaling\\.${key}" must be a positive finite number, got -1`),
      );
    }
    expect(spec({ rope_scaling: { rope_type: 'linear', factor: 'x' } })).toThrow(
      /field "rope_scaling\.factor" must be a positive finite number, got "x"/,
    );
    expect(spec({ rope_scaling: { rope_type: 7 } })).toThrow(/rope type 7 is not supported/);
  });

  it('token ids of odd types', () => {
    expect(spec({ eos_token_id: '</s>' })).toThrow(
      /field "eos_token_id" must be a token id, a list of token ids or null, got "<\/s>"/,
    );
    expect(spec({ eos_token_id: [2, null] })).toThrow(/field "eos_token_id" must be/);
    expect(spec({ eos_token_id: { id: 2 } })).toThrow(/field "eos_token_id" must be/);
    expect(spec({ bos_token_id: '<s>' })).toThrow(
      /field "bos_token_id" must be a token id \(an integer\) or null, got "<s>"/,
    );
    expect(spec({ pad_token_id: 1.5 })).toThrow(/field "pad_token_id" must be a token id/);
    expect(specFromConfig({ ...config, eos_token_id: [2, 3], pad_token_id: null }, FILE)).toMatchObject({
      eosTokenIds: [2, 3],
      padTokenId: null,
    });
    // Older Llama configs spell "no pad token" as -1.
    expect(specFromConfig({ ...config, pad_token_id: -1 }, FILE).padTokenId).toBeNull();
  });

  it('sliding_window must be a positive integer or null', () => {
    expect(spec({ model_type: 'mistral', sliding_window: 0 })).toThrow(
      /field "sliding_window" must be a positive integer or null, got 0/,
    );
    expect(spec({ model_type: 'mistral', sliding_window: '4096' })).toThrow(
      /field "sliding_window" must be a positive integer or null/,
    );
    expect(specFromConfig({ ...config, model_type: 'mistral', sliding_window: 64 }, FILE).slidingWindow).toBe(64);
  });

  it('through Decoder.load: eps −1 and a null config fail with the path of config.json', async () => {
    const { dir } = makeCheckpoint(config, { seed: 1 });
    const cfgPath = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, rms_norm_eps: -1 }));
    await expect(load(dir)).rejects.toThrow(
      new RegExp(`${cfgPath}: field "rms_norm_eps" must be a positive finite number, got -1`),
    );
    fs.writeFileSync(cfgPath, 'null');
    await expect(load(dir)).rejects.toThrow(new RegExp(`${cfgPath}: expected a JSON object, got null`));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, num_hidden_layers: 1.5 }));
    await expect(load(dir)).rejects.toThrow(
      new RegExp(`${cfgPath}: field "num_hidden_layers" must be a positive integer, got 1.5`),
    );
  });
});

describe('checkpoint against config.json', () => {
  it('num_hidden_layers smaller than the layers in the checkpoint', async () => {
    const { dir } = makeCheckpoint({ ...config, num_hidden_layers: 5 }, { seed: 4 });
    const cfgPath = path.join(dir, 'config.json');
    fs.writeFileSync(
      cfgPath,
      JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgPath, 'utf8')), num_hidden_layers: 3 }),
    );
    await expect(load(dir)).rejects.toThrow(ModelError);
    await expect(load(dir)).rejects.toThrow(
      new RegExp(
        `${cfgPath}: num_hidden_layers is 3 but the checkpoint holds 5 layers \\(model\\.layers\\.0 to ` +
          `model\\.layers\\.4\\)`,
      ),
    );
  });
});

describe('non-finite weights', () => {
  /** Overwrites elements of one F32 tensor in a single-file checkpoint. */
  function poke(dir: string, tensor: string, values: [number, number][]): void {
    const file = path.join(dir, 'model.safetensors');
    const ckpt = SafetensorsCheckpoint.openFile(file);
    const { start } = ckpt.info(tensor);
    ckpt.close();
    const fd = fs.openSync(file, 'r+');
    for (const [i, v] of values) fs.writeSync(fd, new Uint8Array(new Float32Array([v]).buffer), 0, 4, start + 4 * i);
    fs.closeSync(fd);
  }

  it('NaN and Inf in one weight name the tensor and the count; no cache entry is left behind', async () => {
    const { dir } = makeCheckpoint(config, { seed: 5 });
    poke(dir, 'model.layers.1.self_attn.k_proj.weight', [
      [0, NaN],
      [17, Infinity],
      [40, -Infinity],
    ]);
    const cache = tempDir('arm-cache-');
    const err = await load(dir, cache).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelError);
    expect((err as Error).message).toMatch(
      new RegExp(
        String.raw`model\.safetensors: tensor "model\.layers\.1\.self_attn\.k_proj\.weight" holds 3 non-finite ` +
          String.raw`values \(NaN or ±Inf\) of 512; expected finite weights`,
      ),
    );
    const graphs = path.join(cache, 'graphs');
    expect(fs.existsSync(graphs) ? fs.readdirSync(graphs) : []).toEqual([]);
  });

  it('one NaN in a norm weight (read as is, not transposed)', async () => {
    const { dir } = makeCheckpoint(config, { seed: 6 });
    poke(dir, 'model.norm.weight', [[3, NaN]]);
    await expect(load(dir, tempDir('arm-cache-'))).rejects.toThrow(
      /tensor "model\.norm\.weight" holds 1 non-finite value \(NaN or ±Inf\) of 32/,
    );
  });
});

describe('writing', () => {
  it('a failed write leaves no temporary file behind', () => {
    const dir = tempDir();
    const target = path.join(dir, 'out.safetensors');
    fs.mkdirSync(target); // renaming a file onto a non-empty folder fails
    fs.writeFileSync(path.join(target, 'keep'), 'x');
    expect(() =>
      writeSafetensors(target, [{ name: 't', dtype: 'F32', shape: [1], bytes: new Uint8Array(4) }]),
    ).toThrow();
    expect(fs.readdirSync(dir)).toEqual(['out.safetensors']);
  });
});
