"""Float64 NumPy reference of the tiny LLaVA-OneVision image encoder in
../shared/fixtures/hf-parity/llava_onevision-tiny, written from the semantics of transformers' SiglipVisionModel and
LlavaOnevisionModel.get_image_features (not from their code): patch Conv + learned positions, pre-LN encoder
layers with a GELU-tanh MLP, the hidden state of `vision_feature_layer` (before post_layernorm), and the
2-layer projector with GELU.

The fixture records only SigLIP's pooled output (post_layernorm + attention-pooling head), which the model does
not use; this script checks itself against it and writes the projector output per tile to
test/fixtures/vision/llava_onevision-tiny-features.json, the reference for the tower graph's `image_features`.
Needs only numpy. Run from the repository root: python3 tools/llava_onevision_features_reference.py
"""
import json, math, os, struct
import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), '../../shared/fixtures/hf-parity/llava_onevision-tiny')
OUT = os.path.join(os.path.dirname(__file__), '../test/fixtures/vision/llava_onevision-tiny-features.json')

def load(f):
    b = open(f, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        dt = {'F32': np.float32, 'F64': np.float64, 'I64': np.int64}[v['dtype']]
        s, e = v['data_offsets']
        a = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt).reshape(v['shape'])
        out[k] = a.astype(np.int64 if dt == np.int64 else np.float64)
    return out

def main():
    config = json.load(open(os.path.join(FIXTURE, 'config.json'))); cfg = config['vision_config']
    assert config.get('vision_feature_layer', -1) == -1 and config.get('vision_feature_select_strategy') == 'full'
    W = load(os.path.join(FIXTURE, 'model.safetensors')); T = load(os.path.join(FIXTURE, 'tensors.safetensors'))
    p = 'vision_tower.'
    proc = json.load(open(os.path.join(FIXTURE, 'parity.json')))['processor']
    pv = T[f'{proc}.image0.pixel_values'][0]                       # [tiles, 3, S, S]
    tiles, C, S, _ = pv.shape; P = cfg['patch_size']; s = S // P; D = cfg['hidden_size']; H = cfg['num_attention_heads']; hd = D // H
    eps = cfg.get('layer_norm_eps', 1e-6)
    patches = pv.reshape(tiles, C, s, P, s, P).transpose(0, 2, 4, 1, 3, 5).reshape(tiles, s * s, C * P * P)
    x = patches @ W[p + 'embeddings.patch_embedding.weight'].reshape(D, -1).T + W[p + 'embeddings.patch_embedding.bias']
    x = x + W[p + 'embeddings.position_embedding.weight']
    ln = lambda v, w, b: (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + eps) * w + b
    gelu_tanh = lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    def attend(q, k, v):                                           # [t, n, D] each (k, v) / [t or 1, m, D] (q)
        sp = lambda a: a.reshape(a.shape[0], a.shape[1], H, hd).transpose(0, 2, 1, 3)
        sc = sp(q) @ sp(k).transpose(0, 1, 3, 2) / math.sqrt(hd); sc = np.exp(sc - sc.max(-1, keepdims=True)); sc /= sc.sum(-1, keepdims=True)
        o = sc @ sp(v); return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], D)
    lin = lambda v, name: v @ W[name + '.weight'].T + W[name + '.bias']
    for l in range(cfg['num_hidden_layers']):
        b = f'{p}encoder.layers.{l}.'
        h = ln(x, W[b + 'layer_norm1.weight'], W[b + 'layer_norm1.bias'])
        x = x + lin(attend(lin(h, b + 'self_attn.q_proj'), lin(h, b + 'self_attn.k_proj'), lin(h, b + 'self_attn.v_proj')), b + 'self_attn.out_proj')
        h = ln(x, W[b + 'layer_norm2.weight'], W[b + 'layer_norm2.bias'])
        x = x + lin(gelu_tanh(lin(h, b + 'mlp.fc1')), b + 'mlp.fc2')
    features = lin(gelu(lin(x, 'multi_modal_projector.linear_1')), 'multi_modal_projector.linear_2')
    # Self-check through the pooled output the fixture does record.
    h = ln(x, W[p + 'post_layernorm.weight'], W[p + 'post_layernorm.bias'])
    wq, wk, wv = np.split(W[p + 'head.attention.in_proj_weight'], 3); bq, bk, bv = np.split(W[p + 'head.attention.in_proj_bias'], 3)
    probe = W[p + 'head.probe'].reshape(1, 1, D)
    a = attend(probe @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv) @ W[p + 'head.attention.out_proj.weight'].T + W[p + 'head.attention.out_proj.bias']
    pooled = (a + lin(gelu_tanh(lin(ln(a, W[p + 'head.layernorm.weight'], W[p + 'head.layernorm.bias']), p + 'head.mlp.fc1')), p + 'head.mlp.fc2'))[:, 0]
    ref = T['vision_tower_output.image0']
    err = float(np.abs(pooled - ref).max() / np.abs(ref).max())
    assert err < 1e-6, f'reference disagrees with HF pooled output: {err}'
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    json.dump({'note': 'written by tools/llava_onevision_features_reference.py (float64 NumPy)', 'pooledVsHfRelative': err,
               'shape': list(features.shape), 'features': features.flatten().tolist()}, open(OUT, 'w'))
    print(f'pooled vs HF: {err:.2e}; wrote features {list(features.shape)} to {OUT}')

if __name__ == '__main__':
    main()
