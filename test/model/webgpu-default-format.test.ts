/**
 * The default weight format on a WebGPU adapter without fp16 shaders (docs/gpu.md): the fp16 probe is made to fail
 * as on an adapter lacking shader-f16, and a load without --dtype takes what the adapter runs (fp32 for
 * stories260K) and says why, while an explicit --dtype fp16 stays an error. Runs on lavapipe (which has the
 * feature, hence the stand-in probe); skipped with the reason in its name where Dawn finds no adapter.
 */
import { describe, expect, it, vi } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { deviceProblem } from '../../src/model/session.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { loadCapturingStderr } from '../helpers/capture-load.js';

const NO_HALF =
  "--dtype fp16 on --device webgpu needs fp16 shaders, the WebGPU adapter's 'shader-f16' feature (stand-in)";
vi.mock('../../src/model/session.js', async (original) => ({
  ...(await original<typeof import('../../src/model/session.js')>()),
  halfPrecisionProblem: () => Promise.resolve(NO_HALF),
}));

const problem = await deviceProblem('webgpu');
const suite = problem === null ? 'webgpu without shader-f16' : `webgpu SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);

describe.skipIf(problem !== null)(suite, () => {
  const cacheDir = tempDir('arm-cache-');

  it('without --dtype the default is fp32 for stories260K (not fp16), and the weights line says why', async () => {
    const { decoder: d, stderr } = await loadCapturingStderr(STORIES, { cacheDir, device: 'webgpu' });
    try {
      expect(d.info.weightFormat.dtype).toBe('fp32');
      expect(stderr).toMatch(/^weights: fp32; fp16 is the GPU default .*lacks 'shader-f16'\), so fp32$/m);
      const { logits } = await d.forward([[1, 403, 407]]);
      expect(logits.every(Number.isFinite)).toBe(true);
    } finally {
      await d.dispose();
    }
  });

  it('an explicit --dtype fp16 stays an error that names shader-f16', async () => {
    await expect(Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp16' })).rejects.toThrow(
      /shader-f16.*stand-in/,
    );
  });
});
