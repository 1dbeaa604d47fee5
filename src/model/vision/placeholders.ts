/**
 * Image placeholder tokens: which ids a checkpoint uses (config.json), and expanding a prompt that carries one
 * placeholder per image into one placeholder per image token, as HF processors do before tokenisation
 * (Qwen: `<|image_pad|>` × t·h·w/merge²; LLaVA-OneVision: `<image>` × its anyres token count).
 */
import { ModelError } from '../errors.js';

export interface ImagePlaceholderIds {
  /** The image placeholder (`<|image_pad|>`, `<image>`): `image_token_id`, or LLaVA's `image_token_index`. */
  readonly image: number;
  /** Qwen's `<|vision_start|>` / `<|vision_end|>` around each placeholder run, where the config names them. */
  readonly visionStart?: number;
  readonly visionEnd?: number;
}

function readId(config: Record<string, unknown>, key: string): number | undefined {
  const v = config[key];
  if (v === undefined || v === null) return undefined;
  if (!Number.isInteger(v) || (v as number) < 0)
    throw new ModelError(`config.json: "${key}" must be a token id, got ${JSON.stringify(v)}`);
  return v as number;
}

/** Placeholder ids from an image-text config.json (top level, as Qwen-VL and LLaVA-OneVision write them). */
export function imagePlaceholderIds(config: Record<string, unknown>): ImagePlaceholderIds {
  const image = readId(config, 'image_token_id') ?? readId(config, 'image_token_index');
  if (image === undefined)
    throw new ModelError(
      'config.json: neither "image_token_id" nor "image_token_index" names the image placeholder token',
    );
  const visionStart = readId(config, 'vision_start_token_id');
  const visionEnd = readId(config, 'vision_end_token_id');
  return {
    image,
    ...(visionStart !== undefined ? { visionStart } : {}),
    ...(visionEnd !== undefined ? { visionEnd } : {}),
  };
}

/** Where one image's tokens sit in the expanded ids. */
export interface ImageSpan {
  readonly start: number;
  readonly length: number;
}

export interface ExpandedPrompt {
  readonly inputIds: number[];
  /** One per image, in prompt order: the rows of `inputs_embeds` its vision features replace. */
  readonly imageSpans: ImageSpan[];
}

/**
 * Replace the i-th occurrence of `imageTokenId` in `ids` by `tokenCounts[i]` copies of it. Each occurrence is one
 * image, as in HF processors, so a prompt must carry exactly one placeholder per image: a run that is already
 * expanded is an error (it would be read as many images).
 */
export function expandImagePlaceholders(
  ids: readonly number[],
  imageTokenId: number,
  tokenCounts: readonly number[],
): ExpandedPrompt {
  const positions: number[] = [];
  ids.forEach((id, i) => {
    if (id === imageTokenId) positions.push(i);
  });
  if (positions.length !== tokenCounts.length) {
    throw new ModelError(
      `the prompt has ${positions.length} image placeholder${positions.length === 1 ? '' : 's'} ` +
        `(token ${imageTokenId}) but ${tokenCounts.length} image${tokenCounts.length === 1 ? '' : 's'} were given; ` +
        'write one placeholder per image',
    );
  }
  const inputIds: number[] = [];
  const imageSpans: ImageSpan[] = [];
  let from = 0;
  positions.forEach((at, i) => {
    const n = tokenCounts[i]!;
    if (!Number.isInteger(n) || n < 1)
      throw new ModelError(`image ${i}: token count must be a positive integer, got ${n}`);
    for (let k = from; k < at; k++) inputIds.push(ids[k]!);
    imageSpans.push({ start: inputIds.length, length: n });
    for (let k = 0; k < n; k++) inputIds.push(imageTokenId);
    from = at + 1;
  });
  for (let k = from; k < ids.length; k++) inputIds.push(ids[k]!);
  return { inputIds, imageSpans };
}

/**
 * The image spans of ids that are already expanded (each maximal run of the placeholder is one image), checked
 * against the token counts the images need. For prompts whose chat template or caller expanded them.
 */
export function imageSpansOf(
  ids: readonly number[],
  imageTokenId: number,
  tokenCounts?: readonly number[],
): ImageSpan[] {
  const spans: ImageSpan[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== imageTokenId) continue;
    let j = i;
    while (j < ids.length && ids[j] === imageTokenId) j++;
    spans.push({ start: i, length: j - i });
    i = j - 1;
  }
  if (tokenCounts) {
    if (spans.length !== tokenCounts.length)
      throw new ModelError(`found ${spans.length} image placeholder runs, but ${tokenCounts.length} images were given`);
    spans.forEach((s, i) => {
      if (s.length !== tokenCounts[i])
        throw new ModelError(
          `image ${i}: ${s.length} placeholder tokens in the prompt, but the image needs ${tokenCounts[i]}`,
        );
    });
  }
  return spans;
}
