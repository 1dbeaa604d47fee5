/**
 * What the CPU can do that changes which onnxruntime kernels are safe to choose.
 *
 * uint8 × int8 matrix products (MatMulIntegerToFloat, the int8 'rowwise' kernel): onnxruntime's x86 kernels for
 * CPUs without VNNI multiply with vpmaddubsw, which adds two neighbouring u8·s8 products into an int16 and
 * saturates at ±32767. With activations stored as uint8 around zero point 128 and weights using the full int8
 * range, two large neighbours overflow (255·127 + 128·3 > 32767), and the output loses that term outright. The
 * VNNI (vpdpbusd) and AMX kernels accumulate in int32 and are exact. Where this cannot be read (not Linux,
 * not x86), the answer is false: the block-wise kernel is the safe default there.
 */
import fs from 'node:fs';
import os from 'node:os';

let cached: boolean | undefined;

/** True when /proc/cpuinfo lists an int8 dot-product extension (AVX-512 VNNI, AVX-VNNI or AMX-INT8) on x86-64 Linux. */
export function cpuHasInt8DotProduct(): boolean {
  if (cached !== undefined) return cached;
  cached = false;
  if (os.platform() === 'linux' && os.arch() === 'x64') {
    try {
      const flags = /^flags\s*:(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
      cached = flags.some((f) => f === 'avx512_vnni' || f === 'avx_vnni' || f === 'amx_int8');
    } catch {
      /* unreadable: keep the safe answer */
    }
  }
  return cached;
}
