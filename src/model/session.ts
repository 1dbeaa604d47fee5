/**
 * onnxruntime sessions on a chosen device: the one place that opens an InferenceSession for a decoder or a vision
 * tower. `cpu` (default), `webgpu` (bundled with onnxruntime-node: Dawn over Vulkan, Metal or D3D12) and `cuda`
 * (onnxruntime-node's opt-in install). A missing provider or adapter is an error that says what to install, never a
 * silent fall back to the CPU: the session is created with the one provider asked for.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import * as ort from 'onnxruntime-node';
import { ModelError } from './errors.js';
import type { AttentionLayout } from './graph/causal-attention.js';
import { GraphBuilder } from './graph/graph-builder.js';

export type Device = 'cpu' | 'webgpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu', 'cuda'];

/** What to install for a device whose provider or adapter is missing (docs/gpu.md says more). */
const DEVICE_SETUP: Readonly<Record<Exclude<Device, 'cpu'>, string>> = {
  webgpu:
    "a GPU driver with Vulkan (Linux), Metal (macOS) or D3D12 (Windows); on a machine without a GPU, Mesa's " +
    'software Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1 from a Mesa ≥ 25, ' +
    'e.g. bookworm-backports; see docs/gpu.md)',
  cuda:
    "onnxruntime-node's CUDA provider, an opt-in install: " +
    'ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install (CUDA 12 and cuDNN 9 drivers)',
};

/** Checks a --device value (CLI, server, library) and returns it typed. */
export function parseDevice(value: string, where = '--device'): Device {
  if ((DEVICES as readonly string[]).includes(value)) return value as Device;
  throw new ModelError(`${where}: unknown device '${value}' (one of ${DEVICES.join(', ')})`);
}

/**
 * The decoder graph's attention layout on a device: the CPU's chunked one, or on a GPU one chunk over a past of at
 * least one slot (GPU kernels refuse zero-sized dispatches; causal-attention.ts).
 */
export function attentionLayout(device: Device): AttentionLayout {
  if (device === 'cpu') return {};
  // onnxruntime-node returns device-resident outputs ('gpu-buffer') for WebGPU only: there the cache stays on the GPU.
  return device === 'webgpu'
    ? { queryChunks: 1, pastSlot: true, presentOutputs: true }
    : { queryChunks: 1, pastSlot: true };
}

export interface SessionOptions {
  /** onnxruntime intra-op threads (CPU kernels); default: all cores. */
  threads?: number;
  device?: Device;
  /** onnxruntime profiling: a JSON trace with each node's provider, written on session.endProfiling(). */
  profileFilePrefix?: string;
  /**
   * WebGPU: outputs returned as device tensors (location 'gpu-buffer'), never downloaded; they can only be fed back
   * as inputs and disposed (onnxruntime-node cannot read them back: getData() aborted the process here).
   */
  deviceOutputs?: readonly string[];
}

/** An InferenceSession over `modelFile` on `opts.device` (default cpu), or a ModelError saying what is missing. */
/**
 * Whether `device` runs here: null when a one-node graph opens and runs on it, else why not (the ModelError's
 * message). For test suites that skip visibly and for benches that report which device they got.
 */
export async function deviceProblem(device: Device): Promise<string | null> {
  const g = new GraphBuilder(18);
  g.op('Add', [g.input('x', 'FLOAT', [4]), g.floatConst([1, 2, 3, 4], [4])], {}, 'y');
  g.output('y', 'FLOAT', [4]);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'arm-probe-')), 'probe.onnx');
  try {
    fs.writeFileSync(file, g.toBytes('device probe', {}));
    const session = await openSession(file, { device, threads: 1 });
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.of(1, 1, 1, 1), [4]) });
      const y = Array.from(out.y!.data as Float32Array);
      return y.join() === '2,3,4,5' ? null : `--device ${device}: a probe graph computed ${y.join()}, not 2,3,4,5`;
    } finally {
      await session.release();
    }
  } catch (e) {
    return (e as Error).message;
  } finally {
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
}

/** Per device, the answer of halfPrecisionProblem (a probe session is cheap but not free). */
const halfPrecisionProblems = new Map<Device, Promise<string | null>>();

/**
 * Why `--dtype fp16` cannot run on `device`, or null. The CPU provider has no fp16 MatMul kernel on x86: onnxruntime
 * inserts casts back to float32 and folds the weights to float32 at load (profiled here), so nothing is saved.
 * WebGPU needs the adapter's `shader-f16` feature (onnxruntime's f16 shaders refuse to run without it); a one-MatMul
 * fp16 graph is run to find out. CUDA has fp16 kernels on every GPU it supports.
 */
export function halfPrecisionProblem(device: Device): Promise<string | null> {
  if (device === 'cpu')
    return Promise.resolve(
      "--dtype fp16 runs on a GPU (--device webgpu or cuda): onnxruntime's CPU provider has no fp16 MatMul kernel " +
        'here, so it would cast the weights back to float32 at load (no memory saved); on the CPU use fp32, int8 ' +
        'or int4',
    );
  if (device === 'cuda') return Promise.resolve(null);
  let answer = halfPrecisionProblems.get(device);
  if (!answer) {
    answer = probeHalfMatMul(device);
    halfPrecisionProblems.set(device, answer);
  }
  return answer;
}

async function probeHalfMatMul(device: Device): Promise<string | null> {
  const missing = await deviceProblem(device); // no adapter at all: say that, not shader-f16
  if (missing) return missing;
  const g = new GraphBuilder(18);
  const half = (x: string) => g.op('Cast', [x], { to: 10 });
  const product = g.op('MatMul', [half(g.input('x', 'FLOAT', [1, 2])), half(g.floatConst([1, 2, 3, 4], [2, 2]))]);
  g.op('Cast', [product], { to: 1 }, 'y');
  g.output('y', 'FLOAT', [1, 2]);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'arm-probe-')), 'fp16.onnx');
  try {
    fs.writeFileSync(file, g.toBytes('fp16 probe', {}));
    const session = await openSession(file, { device, threads: 1 });
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.of(1, 1), [1, 2]) });
      const y = Array.from(out.y!.data as Float32Array);
      if (y.join() === '4,6') return null;
      return `--dtype fp16 on --device ${device}: an fp16 probe computed ${y.join()}, not 4,6`;
    } finally {
      await session.release();
    }
  } catch (e) {
    const message = (e as Error).message.split('\n')[0]!.trim();
    return (
      `--dtype fp16 on --device ${device} needs fp16 shaders, the WebGPU adapter's 'shader-f16' feature, which ` +
      `this adapter does not expose (onnxruntime: ${message}); use --dtype fp32, int8 or int4 here`
    );
  } finally {
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
}

export async function openSession(modelFile: string, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const device = opts.device ?? 'cpu';
  if (device === 'cuda') checkCudaInstalled();
  const deviceOutputs = opts.deviceOutputs ?? [];
  if (deviceOutputs.length && device !== 'webgpu')
    throw new ModelError(`device-resident outputs are a WebGPU feature, not one of --device ${device}`);
  const options: ort.InferenceSession.SessionOptions = {
    intraOpNumThreads: opts.threads ?? os.availableParallelism(),
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    ...(device === 'cpu' ? {} : { executionProviders: [device] }),
    ...(opts.profileFilePrefix ? { enableProfiling: true, profileFilePrefix: opts.profileFilePrefix } : {}),
    ...(deviceOutputs.length
      ? { preferredOutputLocation: Object.fromEntries(deviceOutputs.map((name) => [name, 'gpu-buffer' as const])) }
      : {}),
  };
  try {
    return await ort.InferenceSession.create(modelFile, options);
  } catch (e) {
    if (device === 'cpu') throw e;
    const message = (e as Error).message.split('\n')[0]!;
    throw new ModelError(
      `--device ${device}: onnxruntime could not open ${modelFile} on ${device} (${message.trim()}); ` +
        `it needs ${DEVICE_SETUP[device]}`,
    );
  }
}

/** The CUDA provider is a separate library onnxruntime-node installs only on request. */
function checkCudaInstalled(): void {
  const binding = path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  const dir = path.join(binding, 'bin', 'napi-v6', process.platform, process.arch);
  const lib = path.join(
    dir,
    process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so',
  );
  if (!fs.existsSync(lib))
    throw new ModelError(
      `--device cuda: the CUDA execution provider is not installed (${lib} missing); install ${DEVICE_SETUP.cuda}`,
    );
}
