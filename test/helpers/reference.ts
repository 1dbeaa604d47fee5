/**
 * An independent reference forward of a Hugging Face Llama-family decoder in plain loops and float64,
 * written from the transformers modelling code (LlamaRMSNorm, rotate_half RoPE, repeat_kv GQA, eager
 * attention, SwiGLU, Qwen3 q_norm/k_norm). It shares no code with src/model: it reads the raw config
 * object and the weights as written by tools/random-checkpoint.ts.
 */
type Weights = Map<string, Float32Array>;

export interface ReferenceResult {
  logits: Float64Array;        // [V] at the last position
  heads: Float64Array[][];     // [L][H] → [d] o_proj input at the last position
}

export interface ReferencePatch { heads: [number, number][]; values: Float64Array[][] /* [L][H][d] */; mode: 'replace' | 'add' }

export function referenceForward(config: Record<string, any>, w: Weights, ids: number[], patch?: ReferencePatch): ReferenceResult {
  const D: number = config.hidden_size, H: number = config.num_attention_heads, KV: number = config.num_key_value_heads ?? H;
  const d: number = config.head_dim ?? D / H, L: number = config.num_hidden_layers, V: number = config.vocab_size;
  const F: number = config.intermediate_size, eps: number = config.rms_norm_eps ?? 1e-6;
  const type: string = config.model_type;
  const qkvBias = type === 'qwen2' || config.attention_bias === true;
  const oBias = type !== 'qwen2' && config.attention_bias === true;
  const get = (n: string) => { const t = w.get(n); if (!t) throw new Error(`reference: missing ${n}`); return t; };
  const S = ids.length;

  // linear: y[o] = sum_i W[o,i] x[i] (+ b[o]); W in HF [out, in]
  const linear = (x: Float64Array, name: string, outDim: number, inDim: number, bias: boolean) => {
    const W = get(`${name}.weight`), b = bias ? get(`${name}.bias`) : null;
    const y = new Float64Array(outDim);
    for (let o = 0; o < outDim; o++) {
      let s = b ? b[o]! : 0;
      for (let i = 0; i < inDim; i++) s += W[o * inDim + i]! * x[i]!;
      y[o] = s;
    }
    return y;
  };
  const rms = (x: Float64Array, weight: Float32Array) => {
    let ms = 0;
    for (const v of x) ms += v * v;
    const r = 1 / Math.sqrt(ms / x.length + eps);
    return x.map((v, i) => v * r * weight[i]!);
  };

  // RoPE inverse frequencies, transformers' _compute_default / _compute_llama3 rope parameters.
  const rp = config.rope_parameters ?? config.rope_scaling ?? {};
  const theta = rp.rope_theta ?? config.rope_theta ?? 10000;
  const ropeType = rp.rope_type ?? rp.type ?? 'default';
  let invFreq = Array.from({ length: d / 2 }, (_, i) => 1 / theta ** ((2 * i) / d));
  if (ropeType === 'linear') invFreq = invFreq.map((f) => f / rp.factor);
  if (ropeType === 'llama3') {
    const old = rp.original_max_position_embeddings, lo = rp.low_freq_factor, hi = rp.high_freq_factor, factor = rp.factor;
    invFreq = invFreq.map((f) => {
      const wl = (2 * Math.PI) / f;
      const scaled = wl > old / lo ? f / factor : f;
      const smooth = (old / wl - lo) / (hi - lo);
      const medium = !(wl < old / hi) && !(wl > old / lo);
      return medium ? (1 - smooth) * scaled / factor + smooth * scaled : scaled;
    });
  }
  const rope = (x: Float64Array, pos: number) => {
    const out = new Float64Array(d);
    for (let i = 0; i < d; i++) {
      const f = pos * invFreq[i % (d / 2)]!;
      const rotated = i < d / 2 ? -x[i + d / 2]! : x[i - d / 2]!;
      out[i] = x[i]! * Math.cos(f) + rotated * Math.sin(f);
    }
    return out;
  };

  const embed = get('model.embed_tokens.weight');
  let hidden = ids.map((t) => Float64Array.from(embed.subarray(t * D, (t + 1) * D)));
  const heads: Float64Array[][] = [];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const x = hidden.map((h) => rms(h, get(`${p}.input_layernorm.weight`)));
    const qs: Float64Array[][] = [], ks: Float64Array[][] = [], vs: Float64Array[][] = [];
    x.forEach((xs, s) => {
      const q = linear(xs, `${p}.self_attn.q_proj`, H * d, D, qkvBias);
      const k = linear(xs, `${p}.self_attn.k_proj`, KV * d, D, qkvBias);
      const v = linear(xs, `${p}.self_attn.v_proj`, KV * d, D, qkvBias);
      const split = (t: Float64Array, n: number) => Array.from({ length: n }, (_, h) => t.slice(h * d, (h + 1) * d));
      let qh = split(q, H), kh = split(k, KV);
      if (type === 'qwen3') {
        qh = qh.map((t) => rms(t, get(`${p}.self_attn.q_norm.weight`)));
        kh = kh.map((t) => rms(t, get(`${p}.self_attn.k_norm.weight`)));
      }
      qs.push(qh.map((t) => rope(t, s)));
      ks.push(kh.map((t) => rope(t, s)));
      vs.push(split(v, KV));
    });
    const z: Float64Array[] = [];
    for (let s = 0; s < S; s++) {
      const zs = new Float64Array(H * d);
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / (H / KV));
        const scores = [];
        for (let t = 0; t <= s; t++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qs[s]![h]![i]! * ks[t]![kvh]![i]!;
          scores.push(dot / Math.sqrt(d));
        }
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let t = 0; t <= s; t++) for (let i = 0; i < d; i++) zs[h * d + i]! += (e[t]! / sum) * vs[t]![kvh]![i]!;
      }
      z.push(zs);
    }
    // Read (and patch) at the last position.
    const last = z[S - 1]!;
    if (patch) {
      for (const [pl, ph] of patch.heads) {
        if (pl !== l) continue;
        for (let i = 0; i < d; i++) {
          const v = patch.values[pl]![ph]![i]!;
          last[ph * d + i] = patch.mode === 'replace' ? v : last[ph * d + i]! + v;
        }
      }
    }
    heads.push(Array.from({ length: H }, (_, h) => last.slice(h * d, (h + 1) * d)));
    hidden = hidden.map((h, s) => {
      const attn = linear(z[s]!, `${p}.self_attn.o_proj`, D, H * d, oBias);
      const mid = h.map((v, i) => v + attn[i]!);
      const x2 = rms(mid, get(`${p}.post_attention_layernorm.weight`));
      const gate = linear(x2, `${p}.mlp.gate_proj`, F, D, config.mlp_bias === true);
      const up = linear(x2, `${p}.mlp.up_proj`, F, D, config.mlp_bias === true);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]!);
      const down = linear(act, `${p}.mlp.down_proj`, D, F, config.mlp_bias === true);
      return mid.map((v, i) => v + down[i]!);
    });
  }
  const final = rms(hidden[S - 1]!, get('model.norm.weight'));
  const head = config.tie_word_embeddings === true ? embed : get('lm_head.weight');
  const logits = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += head[v * D + i]! * final[i]!;
    logits[v] = s;
  }
  return { logits, heads };
}
