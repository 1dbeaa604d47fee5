/**
 * IEEE 754 half precision (fp16) in JS, for `--dtype fp16` weights: float32 → fp16 bits with round-to-nearest-even
 * (as numpy's astype(float16) and torch's .half()), and fp16 bits → float32 (exact). Node 20 has no Float16Array.
 */

const scratch = new DataView(new ArrayBuffer(4));

/** The fp16 bits nearest to `x` (ties to even); beyond fp16's range ±Infinity, NaN stays NaN. */
export function halfBits(x: number): number {
  scratch.setFloat32(0, x);
  const f = scratch.getUint32(0);
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  const mant = f & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf, NaN
  const e = exp - 127 + 15; // the fp16 exponent
  if (e >= 0x1f) return sign | 0x7c00; // overflow → Inf
  if (e <= 0) {
    // Subnormal (or zero): the implicit 1 joins the mantissa, shifted right by 1 − e more places.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    return sign | roundShift(m, shift);
  }
  // A carry out of the mantissa rounds up into the exponent, which is right (up to Inf at the top).
  return sign | ((e << 10) + roundShift(mant, 13));
}

/** m >> shift, rounded to nearest, ties to even. */
function roundShift(m: number, shift: number): number {
  const kept = m >>> shift;
  const rest = m - kept * 2 ** shift;
  const half = 2 ** (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

/** Every value of `x` as fp16 bits. */
export function toHalf(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = halfBits(x[i]!);
  return out;
}

/** The float32 value of fp16 bits `h` (exact: every fp16 is a float32). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
