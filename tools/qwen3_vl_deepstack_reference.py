"""Float64 NumPy reference of the tiny Qwen3-VL vision tower in ../shared/fixtures/hf-parity/qwen3_vl-tiny, written
from the semantics of transformers' Qwen3VLVisionModel (not from its code): patch Conv3d as a MatMul, bilinearly
interpolated learned positions, 2-D rotary, LayerNorm blocks with a GELU-tanh MLP, DeepStack mergers (LayerNorm
after the 2×2 shuffle) and the main merger (LayerNorm before it).

The fixture records only the main merger's output; this script checks itself against it and writes the
DeepStack features it computes to test/fixtures/vision/qwen3_vl-tiny-deepstack.json, the reference for the
tower graph's `deepstack.{i}` outputs. Needs only numpy. Run from the repository root:
    python3 tools/qwen3_vl_deepstack_reference.py
"""
import json, math, os, struct
import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), '../../shared/fixtures/hf-parity/qwen3_vl-tiny')
OUT = os.path.join(os.path.dirname(__file__), '../test/fixtures/vision/qwen3_vl-tiny-deepstack.json')

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
    cfg = json.load(open(os.path.join(FIXTURE, 'config.json')))['vision_config']
    W = load(os.path.join(FIXTURE, 'model.safetensors')); T = load(os.path.join(FIXTURE, 'tensors.safetensors'))
    p = 'model.visual.'
    proc = json.load(open(os.path.join(FIXTURE, 'parity.json')))['processor']
    pv = T[f'{proc}.image0.pixel_values']; _, gh, gw = T[f'{proc}.image0.image_grid_thw'][0]
    D, H, m = cfg['hidden_size'], cfg['num_heads'], cfg['spatial_merge_size']; hd = D // H; N = pv.shape[0]
    x = pv @ W[p + 'patch_embed.proj.weight'].reshape(D, -1).T + W[p + 'patch_embed.proj.bias']
    pos = np.array([(bh * m + mh, bw * m + mw) for bh in range(gh // m) for bw in range(gw // m) for mh in range(m) for mw in range(m)])
    side = int(round(math.sqrt(cfg['num_position_embeddings']))); tab = W[p + 'pos_embed.weight']
    hs, ws = np.linspace(0, side - 1, gh), np.linspace(0, side - 1, gw)
    for i, (r, c) in enumerate(pos):
        hi, wi = hs[r], ws[c]; h0, w0 = int(hi), int(wi); h1, w1 = min(h0 + 1, side - 1), min(w0 + 1, side - 1); dh, dw = hi - h0, wi - w0
        x[i] += tab[h0 * side + w0] * (1 - dh) * (1 - dw) + tab[h0 * side + w1] * (1 - dh) * dw + tab[h1 * side + w0] * dh * (1 - dw) + tab[h1 * side + w1] * dh * dw
    inv = 1 / (10000 ** (np.arange(0, hd // 2, 2) / (hd // 2)))
    fr = np.concatenate([pos[:, :1] * inv, pos[:, 1:] * inv], 1); emb = np.concatenate([fr, fr], 1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
    ln = lambda v, w, b: (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6) * w + b
    rot = lambda q: np.concatenate([-q[..., hd // 2:], q[..., :hd // 2]], -1)
    gelu_tanh = lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    def merger(v, pre, post_shuffle):
        y = ln(v.reshape(-1, m * m * D), W[pre + 'norm.weight'], W[pre + 'norm.bias']) if post_shuffle else \
            ln(v, W[pre + 'norm.weight'], W[pre + 'norm.bias']).reshape(-1, m * m * D)
        return gelu(y @ W[pre + 'linear_fc1.weight'].T + W[pre + 'linear_fc1.bias']) @ W[pre + 'linear_fc2.weight'].T + W[pre + 'linear_fc2.bias']
    deepstack = []
    for l in range(cfg['depth']):
        b = f'{p}blocks.{l}.'
        qkv = (ln(x, W[b + 'norm1.weight'], W[b + 'norm1.bias']) @ W[b + 'attn.qkv.weight'].T + W[b + 'attn.qkv.bias']).reshape(N, 3, H, hd)
        q, k, v = qkv[:, 0] * cos + rot(qkv[:, 0]) * sin, qkv[:, 1] * cos + rot(qkv[:, 1]) * sin, qkv[:, 2]
        s = np.einsum('nhd,mhd->hnm', q, k) / math.sqrt(hd); s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        x = x + np.einsum('hnm,mhd->nhd', s, v).reshape(N, D) @ W[b + 'attn.proj.weight'].T + W[b + 'attn.proj.bias']
        h = ln(x, W[b + 'norm2.weight'], W[b + 'norm2.bias'])
        x = x + gelu_tanh(h @ W[b + 'mlp.linear_fc1.weight'].T + W[b + 'mlp.linear_fc1.bias']) @ W[b + 'mlp.linear_fc2.weight'].T + W[b + 'mlp.linear_fc2.bias']
        if l in cfg['deepstack_visual_indexes']:
            deepstack.append(merger(x, f"{p}deepstack_merger_list.{cfg['deepstack_visual_indexes'].index(l)}.", True))
    main_out = merger(x, p + 'merger.', False)
    ref = T['vision_tower_output.image0']
    err = float(np.abs(main_out - ref).max() / np.abs(ref).max())
    assert err < 1e-6, f'reference disagrees with HF merger output: {err}'
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    json.dump({'note': 'written by tools/qwen3_vl_deepstack_reference.py (float64 NumPy)', 'mergerVsHfRelative': err,
               'shape': list(deepstack[0].shape), 'deepstack': [d.flatten().tolist() for d in deepstack]}, open(OUT, 'w'))
    print(f'main merger vs HF: {err:.2e}; wrote {len(deepstack)} DeepStack feature sets to {OUT}')

if __name__ == '__main__':
    main()
