/** `arm fit`, `arm score`, `arm inspect`: the Activation RM from the command line. */
import fs from 'node:fs';
import { Option, type Command } from 'commander';
import { readExamples } from '../data/examples.js';
import { fitActivationRM, FitInterrupted, type HeadStrategy } from '../arm/fit.js';
import { ActivationRM } from '../arm/rm.js';
import { disposeDecoder } from '../arm/images.js';
import { FORMAT_VERSION, loadCriterion, type Criterion } from '../arm/criterion.js';
import { addFitOptions, addJudgeOptions, addModelOptions, loadDecoder, modelInputs, nonNegativeInt, positiveInt, prepareOutput, progressBar, writeFileAtomic, type FitCliFlags, type InputFile, type JudgeCliOptions, type ModelCliOptions } from './common.js';

export const DEFAULT_MODEL = 'Qwen/Qwen2.5-0.5B-Instruct';

interface FitCliOptions extends ModelCliOptions, JudgeCliOptions, FitCliFlags {
  examples: string; out: string; seed: number;
  mode: 'replace' | 'add'; heads: HeadStrategy; denoise?: string; keepAllMeans?: boolean; resume?: boolean; force?: boolean;
}

export function registerArmCommands(program: Command): void {
  addFitOptions(addJudgeOptions(addModelOptions(program.command('fit').description('fit an Activation RM criterion from few-shot examples'), DEFAULT_MODEL)))
    .requiredOption('--examples <file.jsonl>', 'few-shot examples: {prompt, chosen, rejected} pairs and/or {prompt, response, label}')
    .requiredOption('--out <file.arm.safetensors>', 'criterion file to write')
    .option('--seed <n>', 'seed for pass sampling and REINFORCE', (v) => nonNegativeInt(v, '--seed'), 0)
    .addOption(new Option('--mode <mode>', 'intervention').choices(['replace', 'add']).default('replace'))
    .option('--heads <which>', 'selected (REINFORCE) | all | random:N', 'selected')
    .option('--denoise <pca:r[:centred|:uncentred]>', 'denoise the means by a PCA of the per-pass activations with r axes (centred: rebuild passes from the top axes, passes off them count less; uncentred: project the mean onto the top axes of the second moment); default centred')
    .option('--keep-all-means', 'store the means of every head, not only the selected ones')
    .option('--resume', 'continue an interrupted fit from <out>.fit-checkpoint.json')
    .option('--force', 'overwrite an existing --out that is not a criterion file')
    .option('--image-root <dir>', 'folder that rows\' image paths are read under (default: the examples file\'s folder)')
    .action(async (o: FitCliOptions & { imageRoot?: string }) => {
      if (o.denoiseBeforeSelection && !o.denoise) throw new Error('--denoise-before-selection needs --denoise pca:r');
      const { examples, skipped } = readExamples(o.examples, { imageRoot: o.imageRoot });
      if (skipped.length) process.stderr.write(`skipped ${skipped.length} rows\n`);
      // Minutes of work must not end in a refused or clobbering write: check where it goes first.
      const checkpointFile = `${o.out}.fit-checkpoint.json`;
      const inputs: InputFile[] = [{ path: o.examples, what: 'the examples file' }, ...modelInputs(o.model)];
      const output = prepareOutput(o.out, { flag: '--out', inputs, criterion: true, force: o.force });
      prepareOutput(checkpointFile, { flag: '--out (its checkpoint)', inputs });
      let decoder;
      try {
        decoder = await loadDecoder(o);
        // A hub id is only a folder once resolved.
        prepareOutput(o.out, { flag: '--out', inputs: modelInputs(decoder.info.modelDir) });
      } catch (e) {
        output.cleanup();
        await disposeDecoder(decoder);
        throw e;
      }
      let stop = false;
      const onSigint = () => {
        if (stop) process.exit(130);
        stop = true;
        process.stderr.write('\nstopping after the current batch or step (Ctrl-C again to quit at once)…\n');
      };
      process.on('SIGINT', onSigint);
      const bars = { means: progressBar('means     ', o.quiet), reinforce: progressBar('reinforce ', o.quiet), readout: progressBar('read-out  ', o.quiet) };
      if (!o.quiet) process.stderr.write(`fitting ${o.out}: ${o.passes} mean passes, ${o.heads === 'selected' ? `${o.steps} REINFORCE steps` : `heads ${o.heads}`} (Ctrl-C stops after the current batch or step and saves ${checkpointFile})\n`);
      try {
        const rm = await fitActivationRM(decoder, examples, {
          template: o.template, templateText: o.templateText, chat: o.chat, templateKwargs: o.templateKwargs, passes: o.passes, shots: o.shots, passesPerDemoSet: o.passesPerDemoSet, seed: o.seed,
          batchSize: o.batchSize, maxLength: o.maxLength, mode: o.mode, heads: o.heads, denoise: o.denoise ?? null, denoiseBeforeSelection: o.denoiseBeforeSelection,
          reinforce: { steps: o.steps, samples: o.samples, lr: o.lr }, checkpointFile, resume: o.resume, modelId: o.model,
          onProgress: (phase, done, total, info) => { bars[phase].update(done, total, info); if (done === total) bars[phase].stop(); },
          warn: (m) => process.stderr.write(`warning: ${m}\n`),
          shouldStop: () => stop,
        });
        rm.save(o.out, { keepAllMeans: o.keepAllMeans });
        fs.rmSync(checkpointFile, { force: true });
        const m = rm.criterion.meta;
        process.stderr.write(`wrote ${o.out}: ${m.heads.length} of ${m.model.numLayers * m.model.numHeads} heads, seed ${m.seed}, ${m.fit.seconds.toFixed(1)} s; answer tokens ${m.answerTokens.primary.join('/')} (${m.answerTokens.strings.map((s) => JSON.stringify(s)).join('/')})\n`);
      } catch (e) {
        if (e instanceof FitInterrupted) { process.stderr.write(`${e.message}\n`); process.exitCode = 130; return; }
        output.cleanup();
        throw e;
      } finally {
        Object.values(bars).forEach((b) => b.stop());
        process.off('SIGINT', onSigint);
        await disposeDecoder(decoder);
      }
    });

  addModelOptions(program.command('score').description('score items or pairs with a fitted criterion'), DEFAULT_MODEL)
    .requiredOption('--rm <file.arm.safetensors>', 'criterion file')
    .requiredOption('--input <file.jsonl>', 'pairs {prompt, chosen, rejected} and/or items {prompt, response[, label]}')
    .requiredOption('--output <file.jsonl>', 'input rows with an "arm" field of scores added')
    .option('--batch-size <n>', 'forward batch size', (v) => positiveInt(v, '--batch-size'))
    .option('--max-length <n>', 'token budget per prompt', (v) => positiveInt(v, '--max-length'))
    .option('--image-root <dir>', 'folder that rows\' image paths are read under (default: the input file\'s folder)')
    .action(async (o: ModelCliOptions & { rm: string; input: string; output: string; batchSize?: number; maxLength?: number; imageRoot?: string }) => {
      const { examples } = readExamples(o.input, { labelsOptional: true, imageRoot: o.imageRoot });
      const inputs: InputFile[] = [{ path: o.input, what: 'the --input file' }, { path: o.rm, what: 'the --rm criterion file' }, ...modelInputs(o.model)];
      const output = prepareOutput(o.output, { flag: '--output', inputs });
      let decoder;
      try {
        decoder = await loadDecoder(o);
        prepareOutput(o.output, { flag: '--output', inputs: modelInputs(decoder.info.modelDir) });
      } catch (e) {
        output.cleanup();
        await disposeDecoder(decoder);
        throw e;
      }
      const bar = progressBar('scoring   ', o.quiet);
      try {
        const rm = ActivationRM.load(decoder, o.rm);
        const scores = await rm.scoreExamples(examples, { batchSize: o.batchSize, maxLength: o.maxLength, onProgress: (d, t) => bar.update(d, t) });
        bar.stop();
        const lines = examples.map((e, i) => {
          const s = scores[i]!;
          const arm = 'chosen' in s
            ? { chosen: s.chosen, rejected: s.rejected, margin: s.margin, correct: s.correct, truncated: s.truncated, tooLong: s.tooLong, ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }) }
            : { reward: s.reward, normalized: s.normalized, logitYes: s.logitYes, logitNo: s.logitNo, truncated: s.truncatedTokens > 0, tooLong: s.tooLong };
          return JSON.stringify({ ...e.row, arm: Object.fromEntries(Object.entries(arm).map(([k, v]) => [k, typeof v === 'number' && !Number.isFinite(v) ? null : v])) });
        });
        writeFileAtomic(o.output, lines.join('\n') + '\n');
        const pairs = scores.filter((s) => 'chosen' in s);
        const truncated = scores.filter((s) => ('chosen' in s ? s.truncated : s.truncatedTokens > 0)).length;
        const tooLong = scores.filter((s) => s.tooLong).length;
        const correct = pairs.filter((s) => 'correct' in s && s.correct).length;
        process.stderr.write(`scored ${examples.length} rows → ${o.output}` +
          (pairs.length ? `; pairs: accuracy ${(correct / pairs.length).toFixed(4)} (${correct}/${pairs.length}, ties and unscorable count as wrong)` : '') +
          `; truncated prompts: ${truncated}; too long to score: ${tooLong}\n`);
      } catch (e) {
        output.cleanup();
        throw e;
      } finally {
        bar.stop();
        await disposeDecoder(decoder);
      }
    });

  program.command('inspect').description('show what a criterion file holds').argument('<file>', '.arm.safetensors file')
    .option('--json', 'print the metadata as JSON')
    .action((file: string, o: { json?: boolean }) => {
      // Any format version: inspecting an old file says what it was (scoring with it is refused).
      const c = loadCriterion(file, { anyVersion: true });
      if (c.meta.formatVersion !== FORMAT_VERSION) process.stderr.write(`warning: ${file} has format version ${c.meta.formatVersion}; this build scores only version ${FORMAT_VERSION} files: fit the criterion again\n`);
      if (o.json) { process.stdout.write(`${JSON.stringify({ ...c.meta, probs: Array.from(c.probs) })}\n`); return; }
      process.stdout.write(describeCriterion(file, c));
    });
}

export function describeCriterion(file: string, c: Criterion): string {
  const m = c.meta;
  const { numLayers: L, numHeads: H } = m.model;
  const selected = new Set(m.heads.map(([l, h]) => l * H + h));
  // Validated files hold finite numbers; the fallback keeps a damaged one printable.
  const num = (x: unknown, digits: number) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : String(x));
  const shade = (p: number) => ' ░▒▓█'[Math.min(4, Math.floor(p * 5))]!;
  const lines = [
    `${file}`,
    `  model      ${m.model.id} (${m.model.family}, ${L} layers × ${H} heads, d ${m.model.headDim}); config sha256 ${m.model.configHash.slice(0, 12)}…${m.model.visionConfigHash ? `; vision config sha256 ${m.model.visionConfigHash.slice(0, 12)}…` : ''}`,
    `  template   ${m.template.kind}${m.template.chat ? ` via chat template${m.template.templateKwargs ? ` ${JSON.stringify(m.template.templateKwargs)}` : ''}` : ' plain text'}; answers ${m.answerTokens.strings.map((s, i) => `${JSON.stringify(s)}→${m.answerTokens.primary[i]}`).join(', ')}`,
    `  heads      ${m.heads.length} of ${L * H} (${m.headStrategy}, ${m.mode}${m.denoise ? `, denoise ${m.denoise}${m.hyper.denoiseBeforeSelection ? ' before selection' : ''}` : ''}): ${m.heads.map(([l, h]) => `L${l}H${h}`).join(' ')}`,
    `  fit        seed ${m.seed}; ${m.fit.meanPasses} mean passes × ${m.hyper.shots} shots; ${m.fit.reinforceSteps} REINFORCE steps` +
      (m.hyper.reinforce ? ` (S ${m.hyper.reinforce.samples}, lr ${m.hyper.reinforce.lr})` : '') + `; ${num(m.fit.seconds, 1)} s; ${m.fit.createdAt}`,
    `  examples   ${m.examples.count} (${m.examples.items} judge items, ${m.examples.itemsTooLong} too long); sha256 ${m.examples.sha256.slice(0, 12)}…`,
    m.readout ? `  read-out   best mean loss ${num(m.readout.meanLoss, 4)} of ${m.readout.candidates.length} sampled masks` : '',
    '',
    `  selection probability σ(θ) per layer × head (█ ≥ 0.8; * = selected)`,
    `        ${Array.from({ length: H }, (_, h) => String(h % 10)).join(' ')}`,
    ...Array.from({ length: L }, (_, l) => `  L${String(l).padStart(3)} ${Array.from({ length: H }, (_, h) => (selected.has(l * H + h) ? '*' : shade(c.probs[l * H + h]!))).join(' ')}`),
    '',
  ];
  return lines.filter((x, i) => x !== '' || i > 5).join('\n');
}
