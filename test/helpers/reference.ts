/**
 * An independent reference forward of a Hugging Face Llama-family decoder in plain loops and float64,
 * written from the transformers modelling code (LlamaRMSNorm, rotate_half RoPE, repeat_kv GQA, eager
 * attention, SwiGLU, Qwen3 q_norm/k_norm; Gemma's (1 + w) norms, √D embeddings and GeGLU; Gemma 2/3
 * pre/post norms, query_pre_attn_scalar, soft-capping, sliding layers and Gemma 3's local RoPE base; Phi-3's
 * fused projections and partial rotary). It shares no code with src/model: it reads the raw config
 * object and the weights as written by tools/random-checkpoint.ts.
 */
type Weights = Map<string, Float32Array>;

export interface ReferenceResult {
  logits: Float64Array; // [V] at the last position
  heads: Float64Array[][]; // [L][H] → [d] o_proj input at the last position
}

export interface ReferencePatch {
  heads: [number, number][];
  values: Float64Array[][] /* [L][H][d] */;
  mode: 'replace' | 'add';
}

export function referenceForward(
  config: Record<string, any>,
  w: Weights,
  ids: number[],
  patch?: ReferencePatch,
): ReferenceResult {
  const D: number = config.hidden_size,
    H: number = config.num_attention_heads,
    KV: number = config.num_key_value_heads ?? H;
  const d: number = config.head_dim ?? D / H,
    L: number = config.num_hidden_layers,
    V: number = config.vocab_size;
  const F: number = config.intermediate_size,
    eps: number = config.rms_norm_eps ?? 1e-6;
  const type: string = config.model_type;
  const gemma = type === 'gemma' || type === 'gemma2' || type === 'gemma3_text';
  const gemma23 = type === 'gemma2' || type === 'gemma3_text';
  const phi3 = type === 'phi3';
  const qkvBias = type === 'qwen2' || (!phi3 && config.attention_bias === true);
  const oBias = type !== 'qwen2' && !phi3 && config.attention_bias === true;
  // Gemma 2/3 layer kinds: layer_types, else Gemma 2 alternates (even layers slide), Gemma 3 makes every
  // sliding_window_pattern-th layer global; Mistral-style configs slide everywhere.
  const pattern: number = config.sliding_window_pattern ?? config._sliding_window_pattern ?? 6;
  const sliding = (l: number): boolean => {
    if (config.sliding_window == null) return false;
    if (config.layer_types) return config.layer_types[l] === 'sliding_attention';
    if (type === 'gemma2') return l % 2 === 0;
    if (type === 'gemma3_text') return (l + 1) % pattern !== 0;
    return true;
  };
  const scaling = gemma23 ? (config.query_pre_attn_scalar ?? 256) ** -0.5 : 1 / Math.sqrt(d);
  const attnCap: number | null =
    type === 'gemma2'
      ? config.attn_logit_softcapping === undefined
        ? 50
        : config.attn_logit_softcapping
      : (config.attn_logit_softcapping ?? null);
  const finalCap: number | null =
    type === 'gemma2'
      ? config.final_logit_softcapping === undefined
        ? 30
        : config.final_logit_softcapping
      : (config.final_logit_softcapping ?? null);
  const act = (x: number) =>
    gemma
      ? 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))) // gelu_pytorch_tanh
      : x / (1 + Math.exp(-x)); // silu
  const get = (n: string) => {
    const t = w.get(n);
    if (!t) throw new Error(`reference: missing ${n}`);
    return t;
  };
  const S = ids.length;

  // linear: y[o] = sum_i W[o,i] x[i] (+ b[o]); W in HF [out, in]
  const linear = (x: Float64Array, name: string, outDim: number, inDim: number, bias: boolean) => {
    const W = get(`${name}.weight`),
      b = bias ? get(`${name}.bias`) : null;
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
    return x.map((v, i) => v * r * ((gemma ? 1 : 0) + weight[i]!));
  };

  // RoPE inverse frequencies, transformers' _compute_default / _compute_llama3 rope parameters, over the
  // first rd = int(d · partial_rotary_factor) dimensions. Gemma 3: the sliding layers' own parameters.
  const rpAll = config.rope_parameters ?? config.rope_scaling ?? {};
  const rd = Math.floor(d * (rpAll.partial_rotary_factor ?? config.partial_rotary_factor ?? 1));
  const inverseFrequencies = (rp: Record<string, any>, theta: number) => {
    const ropeType = rp.rope_type ?? rp.type ?? 'default';
    let invFreq = Array.from({ length: rd / 2 }, (_, i) => 1 / theta ** ((2 * i) / rd));
    if (ropeType === 'linear') invFreq = invFreq.map((f) => f / rp.factor);
    if (ropeType === 'llama3') {
      const old = rp.original_max_position_embeddings,
        lo = rp.low_freq_factor,
        hi = rp.high_freq_factor,
        factor = rp.factor;
      invFreq = invFreq.map((f) => {
        const wl = (2 * Math.PI) / f;
        const scaled = wl > old / lo ? f / factor : f;
        const smooth = (old / wl - lo) / (hi - lo);
        const medium = !(wl < old / hi) && !(wl > old / lo);
        return medium ? ((1 - smooth) * scaled) / factor + smooth * scaled : scaled;
      });
    }
    return invFreq;
  };
  const globalRp = rpAll.full_attention ?? rpAll;
  const globalFreq = inverseFrequencies(globalRp, globalRp.rope_theta ?? config.rope_theta ?? 10000);
  const localFreq =
    type !== 'gemma3_text'
      ? globalFreq
      : rpAll.sliding_attention
        ? inverseFrequencies(rpAll.sliding_attention, rpAll.sliding_attention.rope_theta)
        : inverseFrequencies({}, config.rope_local_base_freq ?? 10000);
  const rope = (x: Float64Array, pos: number, invFreq: number[]) => {
    const out = Float64Array.from(x); // dimensions ≥ rd pass through
    for (let i = 0; i < rd; i++) {
      const f = pos * invFreq[i % (rd / 2)]!;
      const rotated = i < rd / 2 ? -x[i + rd / 2]! : x[i - rd / 2]!;
      out[i] = x[i]! * Math.cos(f) + rotated * Math.sin(f);
    }
    return out;
  };
  const softcap = (x: number, cap: number | null) => (cap === null ? x : Math.tanh(x / cap) * cap);

  const embed = get('model.embed_tokens.weight');
  let hidden = ids.map((t) =>
    Float64Array.from(embed.subarray(t * D, (t + 1) * D), (v) => (gemma ? v * Math.sqrt(D) : v)),
  );
  const heads: Float64Array[][] = [];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const x = hidden.map((h) => rms(h, get(`${p}.input_layernorm.weight`)));
    const invFreq = sliding(l) ? localFreq : globalFreq;
    const qs: Float64Array[][] = [],
      ks: Float64Array[][] = [],
      vs: Float64Array[][] = [];
    x.forEach((xs, s) => {
      let q: Float64Array, k: Float64Array, v: Float64Array;
      if (phi3) {
        const qkv = linear(xs, `${p}.self_attn.qkv_proj`, (H + 2 * KV) * d, D, false);
        [q, k, v] = [qkv.slice(0, H * d), qkv.slice(H * d, (H + KV) * d), qkv.slice((H + KV) * d)];
      } else {
        q = linear(xs, `${p}.self_attn.q_proj`, H * d, D, qkvBias);
        k = linear(xs, `${p}.self_attn.k_proj`, KV * d, D, qkvBias);
        v = linear(xs, `${p}.self_attn.v_proj`, KV * d, D, qkvBias);
      }
      const split = (t: Float64Array, n: number) => Array.from({ length: n }, (_, h) => t.slice(h * d, (h + 1) * d));
      let qh = split(q, H),
        kh = split(k, KV);
      if (type === 'qwen3' || type === 'gemma3_text') {
        qh = qh.map((t) => rms(t, get(`${p}.self_attn.q_norm.weight`)));
        kh = kh.map((t) => rms(t, get(`${p}.self_attn.k_norm.weight`)));
      }
      qs.push(qh.map((t) => rope(t, s, invFreq)));
      ks.push(kh.map((t) => rope(t, s, invFreq)));
      vs.push(split(v, KV));
    });
    const z: Float64Array[] = [];
    for (let s = 0; s < S; s++) {
      const zs = new Float64Array(H * d);
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / (H / KV));
        // Keys t ≤ s; a sliding layer sees only t > s − sliding_window.
        const first = sliding(l) ? Math.max(0, s - config.sliding_window + 1) : 0;
        const scores = [];
        for (let t = first; t <= s; t++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qs[s]![h]![i]! * ks[t]![kvh]![i]!;
          scores.push(softcap(dot * scaling, attnCap));
        }
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let t = first; t <= s; t++)
          for (let i = 0; i < d; i++) zs[h * d + i]! += (e[t - first]! / sum) * vs[t]![kvh]![i]!;
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
      let attn = linear(z[s]!, `${p}.self_attn.o_proj`, D, H * d, oBias);
      // Gemma 2/3: post_attention_layernorm is on the attention output; the MLP's input norm is pre_feedforward.
      if (gemma23) attn = rms(attn, get(`${p}.post_attention_layernorm.weight`));
      const mid = h.map((v, i) => v + attn[i]!);
      const x2 = rms(
        mid,
        get(gemma23 ? `${p}.pre_feedforward_layernorm.weight` : `${p}.post_attention_layernorm.weight`),
      );
      let gate: Float64Array, up: Float64Array;
      if (phi3) {
        const gu = linear(x2, `${p}.mlp.gate_up_proj`, 2 * F, D, false);
        [gate, up] = [gu.slice(0, F), gu.slice(F)];
      } else {
        gate = linear(x2, `${p}.mlp.gate_proj`, F, D, config.mlp_bias === true);
        up = linear(x2, `${p}.mlp.up_proj`, F, D, config.mlp_bias === true);
      }
      const hiddenAct = gate.map((g, i) => act(g) * up[i]!);
      let down = linear(hiddenAct, `${p}.mlp.down_proj`, D, F, config.mlp_bias === true);
      if (gemma23) down = rms(down, get(`${p}.post_feedforward_layernorm.weight`));
      return mid.map((v, i) => v + down[i]!);
    });
  }
  const final = rms(hidden[S - 1]!, get('model.norm.weight'));
  const head = config.tie_word_embeddings === true ? embed : get('lm_head.weight');
  const logits = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += head[v * D + i]! * final[i]!;
    logits[v] = softcap(s, finalCap);
  }
  return { logits, heads };
}
