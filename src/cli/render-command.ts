/**
 * `arm render`: what the judge sees. For every judge item of an input file, the exact prompt the model reads
 * (its chat template, special tokens marked, image placeholders expanded to their token counts), or with
 * `--json` one line per item `{id, text, inputIds, specialIds}` where `specialIds` are the positions of control
 * tokens. For debugging templates, and for checking that text from users never becomes a control token.
 */
import type { Command } from 'commander';
import { readExamples } from '../data/examples.js';
import { judgeItems } from '../arm/fit.js';
import { loadCriterion, checkCriterionMatches } from '../arm/criterion.js';
import { makeTemplate, render, TooLongError, type TemplateSpec } from '../arm/template.js';
import { disposeDecoder, judgeImagesFor, type JudgeImages } from '../arm/images.js';
import type { Tokenizer } from '../model/tokenizer.js';
import {
  addJudgeOptions,
  addModelOptions,
  DEFAULT_MODEL,
  loadDecoder,
  type JudgeCliOptions,
  type ModelCliOptions,
} from './common.js';

interface RenderCliOptions extends ModelCliOptions, JudgeCliOptions {
  input: string;
  rm?: string;
  json?: boolean;
  imageRoot?: string;
}

export function registerRenderCommand(program: Command): void {
  addJudgeOptions(
    addModelOptions(
      program
        .command('render')
        .description('show the exact judge prompt of every item: text with special tokens marked, or ids (--json)'),
      DEFAULT_MODEL,
    ),
  )
    .requiredOption('--input <file.jsonl>', 'pairs {prompt, chosen, rejected} and/or items {prompt, response[, label]}')
    .option(
      '--rm <file.arm.safetensors>',
      "render with this criterion's template (otherwise --template, --template-text, --chat)",
    )
    .option('--json', 'one JSON line per judge item: {id, text, inputIds, specialIds}')
    .option('--image-root <dir>', "folder that rows' image paths are read under (default: the input file's folder)")
    .action(renderCommand);
}

async function renderCommand(o: RenderCliOptions): Promise<void> {
  const { examples } = readExamples(o.input, { labelsOptional: true, imageRoot: o.imageRoot });
  const decoder = await loadDecoder({ ...o, quiet: o.quiet || o.json });
  try {
    let template: TemplateSpec;
    let maxLength = o.maxLength ?? decoder.spec.maxPositions;
    if (o.rm) {
      const { meta } = loadCriterion(o.rm);
      for (const w of checkCriterionMatches(meta, decoder, o.rm)) process.stderr.write(`warning: ${w}\n`);
      template = meta.template;
      maxLength = o.maxLength ?? meta.hyper.maxLength;
    } else {
      template = makeTemplate(
        o.template,
        { text: o.templateText, chat: o.chat, templateKwargs: o.templateKwargs },
        decoder.tokenizer,
      );
    }
    // A query's answer is never shown, so unlabelled items render as they are scored.
    const items = judgeItems(
      examples.map((e) => (e.kind === 'scalar' && e.label === null ? { ...e, label: true } : e)),
      template.kind,
    );
    const images = await judgeImagesFor(decoder, items);
    for (const item of items) {
      let ids: number[];
      try {
        const r = render(decoder.tokenizer, template, [], item, maxLength, images);
        ids = expandImages(r.ids, r.images, images);
      } catch (e) {
        if (!(e instanceof TooLongError)) throw e;
        process.stdout.write(
          o.json
            ? `${JSON.stringify({ id: item.id, tooLong: true, error: e.message })}\n`
            : `── ${item.id}: ${e.message}\n\n`,
        );
        continue;
      }
      const control = decoder.tokenizer.controlTokenIds;
      if (o.json) {
        const specialIds = ids.flatMap((id, at) => (control.has(id) ? [at] : []));
        const text = decoder.tokenizer.decode(ids, { skipSpecialTokens: false });
        process.stdout.write(`${JSON.stringify({ id: item.id, text, inputIds: ids, specialIds })}\n`);
      } else {
        process.stdout.write(`── ${item.id} (${ids.length} tokens)\n${markedText(decoder.tokenizer, ids)}\n\n`);
      }
    }
    if (!o.json)
      process.stderr.write(
        'special tokens are shown as ⟦token⟧ (×n: n in a row); all other text is read as plain text\n',
      );
  } finally {
    await disposeDecoder(decoder);
  }
}

/** Each image placeholder id repeated as many times as its image's tokens (what the model reads). */
function expandImages(ids: number[], files: readonly string[], images: JudgeImages | null): number[] {
  if (!files.length || !images) return ids;
  const placeholder = images.processor.placeholders.image;
  let next = 0;
  return ids.flatMap((id) =>
    id === placeholder && next < files.length ? Array<number>(images.tokens(files[next++]!)).fill(id) : [id],
  );
}

/** The prompt as text, each run of one control token shown as ⟦token⟧ or ⟦token⟧×n; plain text decoded in runs. */
function markedText(tokenizer: Tokenizer, ids: number[]): string {
  const control = tokenizer.controlTokenIds;
  let out = '';
  for (let at = 0; at < ids.length;) {
    let end = at + 1;
    if (control.has(ids[at]!)) {
      while (end < ids.length && ids[end] === ids[at]) end++;
      out += `⟦${tokenizer.decode([ids[at]!], { skipSpecialTokens: false })}⟧${end - at > 1 ? `×${end - at}` : ''}`;
    } else {
      while (end < ids.length && !control.has(ids[end]!)) end++;
      out += tokenizer.decode(ids.slice(at, end), { skipSpecialTokens: false });
    }
    at = end;
  }
  return out;
}
