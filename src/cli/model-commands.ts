/** `arm generate` and `arm forward`: the engine from the command line. */
import type { Command } from 'commander';
import { addModelOptions, loadDecoder, positiveInt, type ModelCliOptions } from './common.js';
import type { Decoder, ImageEmbeds } from '../model/decoder.js';
import { ImageInputs } from '../model/vision/image-inputs.js';
import { decodeImage } from '../model/vision/image.js';

interface PromptOptions extends ModelCliOptions {
  prompt?: string;
  inputIds?: number[];
  chat?: boolean;
  image?: string[];
}

const collect = (v: string, all: string[] = []) => [...all, v];

/**
 * The prompt's ids, with `--image` files placed: the prompt carries one image placeholder per image (the
 * checkpoint's image token, e.g. 500 in the fixtures, `<|image_pad|>` in Qwen chat markup), which is expanded to
 * the image's token count; the vision tower runs once per image.
 */
async function promptWithImages(
  decoder: Decoder,
  o: PromptOptions,
): Promise<{ inputIds: number[]; images?: ImageEmbeds[] }> {
  const ids = promptIds(decoder, o);
  if (!o.image?.length) return { inputIds: ids };
  const inputs = await ImageInputs.load(decoder.info.modelDir, { cacheDir: o.cacheDir, threads: o.threads });
  try {
    const images = [];
    for (const file of o.image) images.push(await decodeImage(file));
    return await inputs.prepare(ids, images);
  } finally {
    await inputs.release();
  }
}

/** `--input-ids 1,403,407`: token ids as given, no tokenizer involved (checkpoints without one work). */
function tokenIds(v: string): number[] {
  const parts = v.split(',').map((p) => p.trim());
  if (parts.some((p) => !/^\d+$/.test(p)))
    throw new Error(`--input-ids must be comma-separated token ids (non-negative integers), got ${JSON.stringify(v)}`);
  return parts.map(Number);
}

/** Exactly one of --prompt (tokenized) and --input-ids (as given). */
function promptIds(decoder: Decoder, o: PromptOptions): number[] {
  if ((o.prompt === undefined) === (o.inputIds === undefined))
    throw new Error('give exactly one of --prompt <text> and --input-ids <ids>');
  if (o.inputIds) {
    if (o.chat) throw new Error('--chat needs --prompt text (--input-ids are fed as given)');
    return o.inputIds;
  }
  return decoder.encodePrompt(o.prompt!, { chat: o.chat });
}

export function registerModelCommands(program: Command): void {
  addModelOptions(program.command('generate').description('greedy continuation of a prompt'))
    .option('--prompt <text>', 'prompt text')
    .option('--input-ids <ids>', 'comma-separated token ids instead of --prompt (no tokenizer needed)', tokenIds)
    .option('--chat', 'wrap the prompt in the chat template as one user turn')
    .option(
      '--image <file>',
      'an image (PNG, JPEG, WebP) for an image-text checkpoint; repeat for several, one placeholder each in the prompt',
      collect,
    )
    .option('--max-new-tokens <n>', 'tokens to generate', (v) => positiveInt(v, '--max-new-tokens'), 64)
    .option('--json', 'print {"inputIds", "outputIds", "text"} instead of text')
    .action(async (o: PromptOptions & { maxNewTokens: number; json?: boolean }) => {
      const decoder = await loadDecoder(o);
      try {
        const { inputIds, images } = await promptWithImages(decoder, o);
        const outputIds = await decoder.generate(inputIds, { maxNewTokens: o.maxNewTokens, images });
        // Without a tokenizer there is no text: ids only (text is null in --json).
        const text = decoder.hasTokenizer ? decoder.tokenizer.decode([...inputIds, ...outputIds]) : null;
        process.stdout.write(
          o.json
            ? `${JSON.stringify({ inputIds, outputIds, text })}\n`
            : `${text ?? [...inputIds, ...outputIds].join(' ')}\n`,
        );
      } finally {
        await decoder.dispose();
      }
    });

  addModelOptions(
    program.command('forward').description('one forward pass: top next-token logits at the last prompt position'),
  )
    .option('--prompt <text>', 'prompt text (tokenized as the tokenizer does by default, BOS included)')
    .option('--input-ids <ids>', 'comma-separated token ids instead of --prompt (no tokenizer needed)', tokenIds)
    .option('--chat', 'apply the chat template first (one user turn + generation prompt)')
    .option(
      '--image <file>',
      'an image (PNG, JPEG, WebP) for an image-text checkpoint; repeat for several, ' +
        'one placeholder each in the prompt (printed inputIds are expanded)',
      collect,
    )
    .option('--top <k>', 'how many top tokens', (v) => positiveInt(v, '--top'), 5)
    .option('--heads', 'include the last-position head activations [layer][head][d]')
    .option('--json', 'print one JSON object')
    .action(async (o: PromptOptions & { top: number; heads?: boolean; json?: boolean }) => {
      const decoder = await loadDecoder(o);
      try {
        const { inputIds, images } = await promptWithImages(decoder, o);
        const out = await decoder.forward([inputIds], undefined, { images: [images] });
        const order = Array.from(out.logits.keys())
          .sort((a, b) => out.logits[b]! - out.logits[a]!)
          .slice(0, o.top);
        const top = order.map((id) => ({ id, logit: out.logits[id]! }));
        if (o.json) {
          const result: Record<string, unknown> = { inputIds, top };
          if (o.heads) {
            const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
            result.heads = Array.from({ length: L }, (_, l) =>
              Array.from({ length: H }, (_, h) => Array.from(out.heads.subarray((l * H + h) * d, (l * H + h + 1) * d))),
            );
          }
          process.stdout.write(`${JSON.stringify(result)}\n`);
          return;
        }
        console.log(`input ids (${inputIds.length}): ${inputIds.join(' ')}`);
        const token = (id: number) =>
          decoder.hasTokenizer
            ? JSON.stringify(decoder.tokenizer.decode([id], { skipSpecialTokens: false }))
            : '(no tokenizer)';
        console.table(top.map((t) => ({ id: t.id, token: token(t.id), logit: Number(t.logit.toFixed(4)) })));
        if (o.heads) console.log('(--heads is printed with --json)');
      } finally {
        await decoder.dispose();
      }
    });
}
