/**
 * The Qwen vision tower graph's grid-dependent inputs for one image (graph/vision-qwen.ts lists them), computed
 * from `image_grid_thw` as transformers' vision model does: each patch's (row, column) for the 2-D rotary angles
 * (`rot_pos_emb`), Qwen2.5-VL's window partition (`get_window_index`) and Qwen3-VL's bilinear interpolation of
 * the learned position grid (`fast_pos_embed_interpolate`).
 */
import { ModelError } from '../errors.js';
import type { QwenVisionSpec } from '../families/types.js';
import { qwenVisionPatchPositions } from './qwen-processor.js';

const MASKED = -1e9; // a padding key's bias: finite, so a window's softmax stays finite

/** Feeds for one image besides pixel_values, as int64/float32 arrays with their shapes. */
export interface QwenVisionFeeds {
  readonly patchPositions: BigInt64Array; // [N, 2]
  readonly window?: {
    gather: BigInt64Array;
    keyBias: Float32Array;
    scatter: BigInt64Array;
    windows: number;
    windowLen: number;
  };
  readonly posEmbed?: { index: BigInt64Array; weight: Float32Array }; // [N, 4] each
}

/** The graph's grid-dependent inputs for an image of `gridThw` (patches), computed as transformers does. */
export function qwenVisionFeeds(spec: QwenVisionSpec, gridThw: readonly [number, number, number]): QwenVisionFeeds {
  const [t, gh, gw] = gridThw;
  const ms = spec.mergeSize;
  if (t !== 1)
    throw new ModelError(
      `vision tower: grid ${t}×${gh}×${gw} has ${t} temporal patches; only still images (1) are supported`,
    );
  if (gh % ms !== 0 || gw % ms !== 0)
    throw new ModelError(`vision tower: grid ${gh}×${gw} is not divisible by the spatial merge size ${ms}`);
  const pos = qwenVisionPatchPositions(gridThw, ms); // [N,2]
  const N = gh * gw;
  const feeds: { -readonly [K in keyof QwenVisionFeeds]: QwenVisionFeeds[K] } = {
    patchPositions: BigInt64Array.from(pos, (v) => BigInt(v)),
  };
  if (spec.windowSize !== null && spec.fullAttentionBlocks.length < spec.depth)
    feeds.window = qwenWindows(spec, gh, gw);
  if (spec.numPositionEmbeddings > 0) {
    const side = Math.round(Math.sqrt(spec.numPositionEmbeddings));
    const lin = (steps: number) =>
      Array.from({ length: steps }, (_, i) => (steps === 1 ? 0 : (i * (side - 1)) / (steps - 1)));
    const hs = lin(gh),
      ws = lin(gw);
    const index = new BigInt64Array(N * 4);
    const weight = new Float32Array(N * 4);
    for (let i = 0; i < N; i++) {
      const hIdx = hs[pos[2 * i]!]!,
        wIdx = ws[pos[2 * i + 1]!]!;
      const h0 = Math.floor(hIdx),
        w0 = Math.floor(wIdx);
      const h1 = Math.min(h0 + 1, side - 1),
        w1 = Math.min(w0 + 1, side - 1);
      const dh = hIdx - h0,
        dw = wIdx - w0;
      const corners = [
        [h0, w0, (1 - dh) * (1 - dw)],
        [h0, w1, (1 - dh) * dw],
        [h1, w0, dh * (1 - dw)],
        [h1, w1, dh * dw],
      ] as const;
      corners.forEach(([r, c, wt], k) => {
        index[4 * i + k] = BigInt(r * side + c);
        weight[4 * i + k] = wt;
      });
    }
    feeds.posEmbed = { index, weight };
  }
  return feeds;
}

/**
 * Qwen2.5-VL's windows: merged units (m×m patches) grouped into squares of window_size / (patch·merge) units,
 * row-major from the top-left; edge windows are smaller. Rows keep their merger order inside a window.
 */
function qwenWindows(spec: QwenVisionSpec, gh: number, gw: number): NonNullable<QwenVisionFeeds['window']> {
  const ms = spec.mergeSize;
  const unitsPerWindow = spec.windowSize! / spec.patchSize / ms;
  const uh = gh / ms,
    uw = gw / ms;
  const wRows = Math.ceil(uh / unitsPerWindow),
    wCols = Math.ceil(uw / unitsPerWindow);
  const members: number[][] = Array.from({ length: wRows * wCols }, () => []);
  for (let r = 0; r < uh; r++) {
    for (let c = 0; c < uw; c++) {
      const win = Math.floor(r / unitsPerWindow) * wCols + Math.floor(c / unitsPerWindow);
      const unit = r * uw + c;
      for (let j = 0; j < ms * ms; j++) members[win]!.push(unit * ms * ms + j);
    }
  }
  const windows = members.filter((w) => w.length > 0);
  const windowLen = Math.max(...windows.map((w) => w.length));
  const gather = new BigInt64Array(windows.length * windowLen);
  const keyBias = new Float32Array(windows.length * windowLen).fill(MASKED);
  const scatter = new BigInt64Array(gh * gw);
  windows.forEach((rows, wi) =>
    rows.forEach((row, j) => {
      gather[wi * windowLen + j] = BigInt(row);
      keyBias[wi * windowLen + j] = 0;
      scatter[row] = BigInt(wi * windowLen + j);
    }),
  );
  return { gather, keyBias, scatter, windows: windows.length, windowLen };
}
