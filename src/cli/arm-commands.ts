/**
 * `arm fit`, `arm score`, `arm inspect`: the Activation RM from the command line. Fitting is fit-command.ts,
 * streamed scoring score-command.ts; `inspect` (what a criterion file holds) is here.
 */
import type { Command } from 'commander';
import { FORMAT_VERSION, loadCriterion, type Criterion } from '../arm/criterion.js';
import { registerFitCommand } from './fit-command.js';
import { registerScoreCommand } from './score-command.js';

export function registerArmCommands(program: Command): void {
  registerFitCommand(program);
  registerScoreCommand(program);
  program
    .command('inspect')
    .description('show what a criterion file holds')
    .argument('<file>', '.arm.safetensors file')
    .option('--json', 'print the metadata as JSON')
    .action(inspectCommand);
}

function inspectCommand(file: string, o: { json?: boolean }): void {
  // Any format version: inspecting an old file says what it was (scoring with it is refused).
  const c = loadCriterion(file, { anyVersion: true });
  if (c.meta.formatVersion !== FORMAT_VERSION)
    process.stderr.write(
      `warning: ${file} has format version ${c.meta.formatVersion}; ` +
        `this build scores only version ${FORMAT_VERSION} files: fit the criterion again\n`,
    );
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ ...c.meta, probs: Array.from(c.probs) })}\n`);
    return;
  }
  process.stdout.write(describeCriterion(file, c));
}

/** A criterion in words: model, template, heads, fit, examples, and the selection probabilities as a map. */
function describeCriterion(file: string, c: Criterion): string {
  const m = c.meta;
  const { numLayers: L, numHeads: H } = m.model;
  const selected = new Set(m.heads.map(([l, h]) => l * H + h));
  // Validated files hold finite numbers; the fallback keeps a damaged one printable.
  const num = (x: unknown, digits: number) =>
    typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : String(x);
  const shade = (p: number) => ' ░▒▓█'[Math.min(4, Math.floor(p * 5))]!;
  const lines = [
    `${file}`,
    ...criterionSummary(m),
    `  fit        seed ${m.seed}; ${m.fit.meanPasses} mean passes × ${m.hyper.shots} shots; ` +
      `${m.fit.reinforceSteps} REINFORCE steps` +
      (m.hyper.reinforce ? ` (S ${m.hyper.reinforce.samples}, lr ${m.hyper.reinforce.lr})` : '') +
      `; ${num(m.fit.seconds, 1)} s; ${m.fit.createdAt}`,
    `  examples   ${m.examples.count} (${m.examples.items} judge items, ${m.examples.itemsTooLong} too long); ` +
      `sha256 ${m.examples.sha256.slice(0, 12)}…`,
    m.readout
      ? `  read-out   best mean loss ${num(m.readout.meanLoss, 4)} of ${m.readout.candidates.length} sampled masks`
      : '',
    '',
    `  selection probability σ(θ) per layer × head (█ ≥ 0.8; * = selected)`,
    `        ${Array.from({ length: H }, (_, h) => String(h % 10)).join(' ')}`,
    ...Array.from({ length: L }, (_, l) => {
      const cells = Array.from({ length: H }, (_, h) => (selected.has(l * H + h) ? '*' : shade(c.probs[l * H + h]!)));
      return `  L${String(l).padStart(3)} ${cells.join(' ')}`;
    }),
    '',
  ];
  return lines.filter((x, i) => x !== '' || i > 5).join('\n');
}

/** The model, template and heads lines of `describeCriterion`. */
function criterionSummary(m: Criterion['meta']): string[] {
  const { numLayers: L, numHeads: H } = m.model;
  const visionHash = m.model.visionConfigHash;
  const vision = visionHash ? `; vision config sha256 ${visionHash.slice(0, 12)}…` : '';
  const kwargs = m.template.templateKwargs ? ` ${JSON.stringify(m.template.templateKwargs)}` : '';
  const answers = m.answerTokens.strings.map((s, i) => `${JSON.stringify(s)}→${m.answerTokens.primary[i]}`);
  const denoise = m.denoise ? `, denoise ${m.denoise}${m.hyper.denoiseBeforeSelection ? ' before selection' : ''}` : '';
  return [
    `  model      ${m.model.id} (${m.model.family}, ${L} layers × ${H} heads, d ${m.model.headDim}); ` +
      `config sha256 ${m.model.configHash.slice(0, 12)}…${vision}`,
    `  template   ${m.template.kind}${m.template.chat ? ` via chat template${kwargs}` : ' plain text'}; ` +
      `answers ${answers.join(', ')}`,
    `  heads      ${m.heads.length} of ${L * H} (${m.headStrategy}, ${m.mode}${denoise}): ` +
      m.heads.map(([l, h]) => `L${l}H${h}`).join(' '),
  ];
}
