/** A decoder load whose stderr (the weights line, build progress) a test reads instead of showing. */
import { vi } from 'vitest';
import { Decoder, type LoadOptions } from '../../src/model/decoder.js';

/** `Decoder.load` with what it writes to stderr (the weights line, build progress) captured rather than shown. */
export async function loadCapturingStderr(
  model: string,
  opts: LoadOptions,
): Promise<{ decoder: Decoder; stderr: string }> {
  const lines: string[] = [];
  const write = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    lines.push(String(chunk));
    return true;
  });
  try {
    return { decoder: await Decoder.load(model, opts), stderr: lines.join('') };
  } finally {
    write.mockRestore();
  }
}
