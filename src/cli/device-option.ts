/** `--device cpu|webgpu|cuda`: where fit, score, eval and serve run the model (src/model/session.ts, docs/gpu.md). */
import { Option, type Command } from 'commander';
import { DEVICES } from '../model/session.js';

export function addDeviceOption(cmd: Command): Command {
  return cmd.addOption(
    new Option(
      '--device <device>',
      'where the model runs: cpu, webgpu (bundled; needs a Vulkan/Metal/D3D12 GPU driver) or cuda ' +
        "(onnxruntime-node's opt-in CUDA install); a missing provider or adapter is an error, not a CPU fall back",
    )
      .choices(DEVICES)
      .default('cpu'),
  );
}
