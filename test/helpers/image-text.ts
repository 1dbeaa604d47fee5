/**
 * Image-text test material: a tiny hf-parity checkpoint (../shared/fixtures/hf-parity, vocabulary 512, no
 * tokenizer) given a word-level tokenizer whose vocabulary fits it, with the model's image placeholders as added
 * tokens and a chat template that renders `{type: "image"}` parts as the model's markup; and coloured-shape PNGs
 * with true and false captions, drawn with sharp.
 */
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { CHATML, tempDir } from './fixtures.js';
import { SafetensorsCheckpoint, writeSafetensors } from '../../src/model/checkpoint/safetensors.js';

export const HF_PARITY = path.resolve(import.meta.dirname, '../../../shared/fixtures/hf-parity');

/** Words the tokenizer knows: the judge templates', the chat roles, and the captions'. Anything else is [UNK]. */
const WORDS = [
  'Prompt',
  'Response',
  'Does',
  'this',
  'response',
  'meet',
  'the',
  'specified',
  'criteria',
  'Answer',
  'with',
  'Yes',
  'or',
  'No',
  'A',
  'B',
  'Which',
  'is',
  'better',
  'user',
  'assistant',
  'system',
  'What',
  'shape',
  'colour',
  'in',
  'picture',
  'image',
  'Describe',
  'a',
  'an',
  'red',
  'green',
  'blue',
  'yellow',
  'circle',
  'square',
  'triangle',
  'small',
  'large',
  'on',
  'white',
  'background',
  'yes',
  'no',
  'It',
  'it',
  'shows',
  'There',
  'there',
  'of',
  ':',
  '?',
  '.',
  ',',
  '!',
];

/**
 * A chat template like Qwen2-VL's: images as `<|vision_start|><|image_pad|><|vision_end|>` (or `<image>`), text as is.
 */
function chatTemplate(imageMarkup: string): string {
  return (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}" +
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}" +
    `{% if part['type'] == 'image' %}{{ '${imageMarkup}' }}` +
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}" +
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
  );
}

export type ImageTextFamily = 'qwen2_5_vl' | 'qwen2_vl' | 'qwen3_vl' | 'llava_onevision';

/**
 * A copy of the `<family>-tiny` fixture with tokenizer.json + tokenizer_config.json. `chat: 'parts'` gives a chat
 * template that renders image parts, `'text'` a plain ChatML one (image markup then goes in as text), false none.
 */
export function imageTextCheckpoint(
  family: ImageTextFamily = 'qwen2_5_vl',
  opts: { chat?: 'parts' | 'text' | false } = {},
): string {
  const src = path.join(HF_PARITY, `${family}-tiny`);
  const dir = tempDir(`arm-${family}-`);
  for (const f of ['config.json', 'model.safetensors', 'preprocessor_config.json', 'generation_config.json'])
    fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const qwen = family !== 'llava_onevision';
  const specials: [string, number][] = qwen
    ? [
        ['<|image_pad|>', 500],
        ['<|video_pad|>', 501],
        ['<|vision_start|>', 502],
        ['<|vision_end|>', 503],
        ['<|im_start|>', 504],
        ['<|im_end|>', 505],
      ]
    : [
        ['<image>', 500],
        ['<video>', 501],
        ['<|im_start|>', 504],
        ['<|im_end|>', 505],
      ];
  const vocab: Record<string, number> = { '[UNK]': 0 };
  WORDS.forEach((w, i) => {
    vocab[w] = i + 1;
  });
  // Fill the ids up to the specials so the vocabulary has no holes.
  for (let id = WORDS.length + 1; id < 500; id++) vocab[`[unused${id}]`] = id;
  for (const [t, id] of specials) vocab[t] = id;
  for (let id = 506; id < 512; id++) vocab[`[unused${id}]`] = id;
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map(([content, id]) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: {
      type: 'WordPiece',
      unk_token: '[UNK]',
      continuing_subword_prefix: '##',
      max_input_chars_per_word: 100,
      vocab,
    },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  const chat = opts.chat ?? 'parts';
  const markup = qwen ? '<|vision_start|><|image_pad|><|vision_end|>' : '<image>\\n';
  const config: Record<string, unknown> = { eos_token: '<|im_end|>', pad_token: '<|im_end|>', unk_token: '[UNK]' };
  if (chat === 'parts') config.chat_template = chatTemplate(markup);
  if (chat === 'text') config.chat_template = CHATML;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

const COLOURS: Record<string, string> = { red: '#e02020', green: '#20a040', blue: '#2040e0', yellow: '#e0c020' };
export const SHAPES = ['circle', 'square', 'triangle'] as const;

function shapeSvg(shape: (typeof SHAPES)[number], fill: string, size: number): string {
  const c = size / 2,
    r = size * 0.35;
  const body =
    shape === 'circle'
      ? `<circle cx="${c}" cy="${c}" r="${r}" fill="${fill}"/>`
      : shape === 'square'
        ? `<rect x="${c - r}" y="${c - r}" width="${2 * r}" height="${2 * r}" fill="${fill}"/>`
        : `<polygon points="${c},${c - r} ${c + r},${c + r} ${c - r},${c + r}" fill="${fill}"/>`;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}">` +
    `<rect width="100%" height="100%" fill="white"/>${body}</svg>`
  );
}

/**
 * Writes `<colour>-<shape>.png` (size × size) into `dir`, drawn in `fill` (default: the colour's); returns the file
 * name.
 */
export async function writeShape(
  dir: string,
  colour: string,
  shape: (typeof SHAPES)[number],
  size = 56,
  fill = COLOURS[colour]!,
): Promise<string> {
  const name = `${colour}-${shape}${size === 56 ? '' : `-${size}`}.png`;
  await sharp(Buffer.from(shapeSvg(shape, fill, size)))
    .png()
    .toFile(path.join(dir, name));
  return name;
}

/**
 * A synthetic image preference set: one picture per (colour, shape), the question "What shape is in the
 * picture ?", the true caption chosen and a false one (other colour or shape) rejected. Rows use paths relative
 * to the JSONL file. Returns the file path and the rows.
 */
export async function writeShapePairs(
  dir: string,
  opts: { file?: string; colours?: string[]; shapes?: (typeof SHAPES)[number][] } = {},
): Promise<{ file: string; rows: Record<string, unknown>[] }> {
  fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  const colours = opts.colours ?? Object.keys(COLOURS);
  const shapes = opts.shapes ?? [...SHAPES];
  const rows: Record<string, unknown>[] = [];
  let k = 0;
  for (const colour of colours) {
    for (const shape of shapes) {
      const name = await writeShape(path.join(dir, 'images'), colour, shape);
      const wrongColour = colours[(colours.indexOf(colour) + 1) % colours.length]!;
      const wrongShape = shapes[(shapes.indexOf(shape) + 1) % shapes.length]!;
      const rejected = k % 2 === 0 ? `a ${wrongColour} ${shape}` : `a ${colour} ${wrongShape}`;
      rows.push({
        id: `${colour}-${shape}`,
        prompt: 'What shape is in the picture ?',
        chosen: `a ${colour} ${shape}`,
        rejected,
        images: [`images/${name}`],
      });
      k++;
    }
  }
  const file = path.join(dir, opts.file ?? 'shapes.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return { file, rows };
}

/** max |a − b| / max |b|: relative to the reference's scale, so near-zero entries do not dominate. */
export function relativeError(ours: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (ours.length !== ref.length) throw new Error(`relativeError: ${ours.length} values against ${ref.length}`);
  let diff = 0,
    scale = 0;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(ours[i]! - ref[i]!));
    scale = Math.max(scale, Math.abs(ref[i]!));
  }
  return diff / scale;
}

/**
 * A copy of a fixture checkpoint (its JSON files and images) with every tensor name passed through `rename` (same
 * bytes).
 */
export function renamedCheckpoint(srcDir: string, rename: (name: string) => string): string {
  const dir = tempDir('arm-renamed-ckpt-');
  for (const f of fs.readdirSync(srcDir))
    if (f.endsWith('.json') || f.endsWith('.png')) fs.copyFileSync(path.join(srcDir, f), path.join(dir, f));
  const src = SafetensorsCheckpoint.open(srcDir);
  try {
    writeSafetensors(
      path.join(dir, 'model.safetensors'),
      src.names().map((n) => {
        const info = src.info(n);
        return { name: rename(n), shape: info.shape, dtype: info.dtype, bytes: new Uint8Array(src.readRaw(n)) };
      }),
    );
  } finally {
    src.close();
  }
  return dir;
}
