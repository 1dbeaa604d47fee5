/**
 * `arm inspect`: what criterion files hold, in words. One file: model, template (its text too), heads and why they
 * were chosen, fit, examples, and the selection probabilities as a layer × head map with a legend. Several files
 * of one model: each one's map, then how their head sets overlap (a combined map whose cells name the criteria
 * that select the head, and pairwise counts).
 */
import path from 'node:path';
import type { Command } from 'commander';
import { FORMAT_VERSION, loadCriterion, type Criterion } from '../arm/criterion.js';

/** σ(θ) bands, from the highest; the last glyph is for p below every bound. */
const SHADES: { glyph: string; from: number; label: string }[] = [
  { glyph: '█', from: 0.8, label: '≥ 0.8' },
  { glyph: '▓', from: 0.6, label: '0.6–0.8' },
  { glyph: '▒', from: 0.4, label: '0.4–0.6' },
  { glyph: '░', from: 0.2, label: '0.2–0.4' },
  { glyph: '·', from: -Infinity, label: '< 0.2' },
];
const SELECTED = '*';
const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

export function registerInspectCommand(program: Command): void {
  program
    .command('inspect')
    .description(
      'show what criterion files hold: template, heads and why they were chosen, a layer × head map; ' +
        'with several files of one model, how their head sets overlap',
    )
    .argument('<files...>', '.arm.safetensors files')
    .option('--json', "print each file's metadata as one line of JSON")
    .action(inspectCommand);
}

function inspectCommand(files: string[], o: { json?: boolean }): void {
  if (files.length > LETTERS.length)
    throw new Error(`inspect compares at most ${LETTERS.length} files at a time; got ${files.length}`);
  const criteria = files.map((file) => {
    // Any format version: inspecting an old file says what it was (scoring with it is refused).
    const c = loadCriterion(file, { anyVersion: true });
    if (c.meta.formatVersion !== FORMAT_VERSION)
      process.stderr.write(
        `warning: ${file} has format version ${c.meta.formatVersion}; ` +
          `this build scores only version ${FORMAT_VERSION} files: fit the criterion again\n`,
      );
    return { file, c };
  });
  if (o.json) {
    for (const { c } of criteria)
      process.stdout.write(`${JSON.stringify({ ...c.meta, probs: Array.from(c.probs) })}\n`);
    return;
  }
  if (criteria.length === 1) {
    process.stdout.write(describeCriterion(files[0]!, criteria[0]!.c));
    return;
  }
  process.stdout.write(describeOverlap(criteria));
}

/** A number for people; validated files hold finite numbers, and the fallback keeps a damaged one printable. */
const num = (x: unknown, digits: number) =>
  typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : String(x);

const shade = (p: number) => SHADES.find((s) => p >= s.from)?.glyph ?? SHADES.at(-1)!.glyph;

/** A criterion in words: model, template, heads and why, fit, examples, and the selection probabilities. */
function describeCriterion(file: string, c: Criterion): string {
  const m = c.meta;
  return [
    file,
    ...criterionSummary(c),
    `  fit        seed ${m.seed}; ${m.fit.meanPasses} mean passes × ${m.hyper.shots} shots; ` +
      `${m.fit.reinforceSteps} REINFORCE steps` +
      (m.hyper.reinforce ? ` (S ${m.hyper.reinforce.samples}, lr ${m.hyper.reinforce.lr})` : '') +
      `; ${num(m.fit.seconds, 1)} s; ${m.fit.createdAt}`,
    `  examples   ${m.examples.count} (${m.examples.items} judge items, ${m.examples.itemsTooLong} too long); ` +
      `sha256 ${m.examples.sha256.slice(0, 12)}…`,
    '',
    ...whyTheseHeads(c),
    '',
    ...headMap(c),
    '',
  ].join('\n');
}

/** The model, template and heads lines of a criterion. */
function criterionSummary(c: Criterion): string[] {
  const m = c.meta;
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
    // JSON quoting shows the text exactly: its whitespace, line breaks and placeholders.
    `  text       ${JSON.stringify(m.template.text)}`,
    // Many heads wrap under the list's start rather than across the terminal.
    ...wrap(
      `${m.heads.length} of ${L * H} (${m.headStrategy}, ${m.mode}${denoise}): ` +
        m.heads.map(([l, h]) => `L${l}H${h}`).join(' '),
      100,
    ).map((line, i) => `  ${i ? ' '.repeat(11) : 'heads      '}${line}`),
  ];
}

/** Why the heads in the file are the ones patched: how they were chosen, and each one's final probability. */
function whyTheseHeads(c: Criterion): string[] {
  const m = c.meta;
  const H = m.model.numHeads;
  const p = (l: number, h: number) => c.probs[l * H + h]!;
  if (m.headStrategy !== 'selected' || !m.hyper.reinforce)
    return [
      `  why these heads: ${m.headStrategy === 'all' ? 'every head (--heads all)' : `--heads ${m.headStrategy}`}, ` +
        'not learned: no REINFORCE ran, so the map below shows 1 for a patched head and 0 for the others',
    ];
  const r = m.hyper.reinforce;
  const others = m.readout ? m.readout.candidates.filter((x) => x !== m.readout!.meanLoss) : [];
  const range = others.length ? `; the other masks ${num(Math.min(...others), 4)}–${num(Math.max(...others), 4)}` : '';
  const byProb = [...m.heads].sort(([la, ha], [lb, hb]) => p(lb, hb) - p(la, ha));
  const why =
    `why these heads: REINFORCE (${m.fit.reinforceSteps} steps × ${r.samples} masks) learned σ(θ), each head's ` +
    `probability of being worth patching for the examples; then ${r.readoutMasks} masks were sampled from σ(θ), ` +
    `and the one with the lowest mean loss on ≤ ${r.readoutItems} judge items was kept` +
    (m.readout ? ` (loss ${num(m.readout.meanLoss, 4)}${range}). ` : '. ') +
    'A head with σ(θ) near 1 is in almost every sample; one with a low σ(θ) is in the kept mask by chance, ' +
    'and one with a high σ(θ) can miss it.';
  return [
    ...wrap(why, 110).map((line) => `  ${line}`),
    '  selected heads, by final σ(θ):',
    ...chunk(
      byProb.map(([l, h]) => `L${l}H${h} ${num(p(l, h), 3)}`.padEnd(13)),
      8,
    ).map((row) => `    ${row.join(' ').trimEnd()}`),
  ];
}

/** `text` in lines of at most `width` characters, broken at spaces. */
function wrap(text: string, width: number): string[] {
  const lines = [''];
  for (const word of text.split(' ')) {
    const last = lines.at(-1)!;
    if (last && last.length + 1 + word.length > width) lines.push(word);
    else lines[lines.length - 1] = last ? `${last} ${word}` : word;
  }
  return lines;
}

function chunk<T>(xs: T[], size: number): T[][] {
  return Array.from({ length: Math.ceil(xs.length / size) }, (_, i) => xs.slice(i * size, (i + 1) * size));
}

/** The layer × head map of σ(θ), selected heads marked, with its legend. */
function headMap(c: Criterion): string[] {
  const { numLayers: L, numHeads: H } = c.meta.model;
  const selected = new Set(c.meta.heads.map(([l, h]) => l * H + h));
  const cell = (l: number, h: number) => shade(c.probs[l * H + h]!) + (selected.has(l * H + h) ? SELECTED : ' ');
  return [
    '  selection probability σ(θ) per layer (rows) × head (columns)',
    `  legend: ${SHADES.map((s) => `${s.glyph} ${s.label}`).join(', ')}; ${SELECTED} after a cell: selected (patched)`,
    ...grid(L, H, 2, cell),
  ];
}

/** Rows `L  0 …` of `width`-character cells under a header of head numbers, aligned whatever the widths. */
function grid(L: number, H: number, width: number, cell: (l: number, h: number) => string): string[] {
  const w = Math.max(width, String(H - 1).length);
  const lw = String(L - 1).length;
  const header = `  ${' '.repeat(lw + 2)}${Array.from({ length: H }, (_, h) => String(h).padEnd(w)).join(' ')}`;
  const rows = Array.from(
    { length: L },
    (_, l) => `  L${String(l).padStart(lw)} ${Array.from({ length: H }, (_, h) => cell(l, h).padEnd(w)).join(' ')}`,
  );
  return [header.trimEnd(), ...rows.map((r) => r.trimEnd())];
}

/** Several criteria of one model: each one's map, then the shared heads and the pairwise overlap. */
function describeOverlap(criteria: { file: string; c: Criterion }[]): string {
  const first = criteria[0]!.c.meta.model;
  for (const { file, c } of criteria.slice(1)) {
    const m = c.meta.model;
    if (m.numLayers !== first.numLayers || m.numHeads !== first.numHeads)
      throw new Error(
        `${file}: ${m.numLayers} layers × ${m.numHeads} heads, but ${criteria[0]!.file} has ` +
          `${first.numLayers} × ${first.numHeads}: head sets of different models cannot be compared`,
      );
  }
  const differentWeights = criteria.filter(({ c }) => c.meta.model.weightsFingerprint !== first.weightsFingerprint);
  const lines: string[] = [];
  criteria.forEach(({ file, c }, i) =>
    lines.push(`${LETTERS[i]} = ${path.basename(file)}: ${c.meta.heads.length} heads`, ...headMap(c), ''),
  );
  if (differentWeights.length)
    lines.push(
      `note: ${differentWeights.map((x) => x.file).join(', ')} were fitted on other weights than ` +
        `${criteria[0]!.file}; the same head index may mean another head`,
      '',
    );
  lines.push(...sharedHeads(criteria.map(({ c }) => c)), '', ...pairwiseOverlap(criteria.map(({ c }) => c)), '');
  return lines.join('\n');
}

const headKeys = (c: Criterion) => new Set(c.meta.heads.map(([l, h]) => l * c.meta.model.numHeads + h));

/** A layer × head map whose cells list the letters of the criteria selecting the head, and the heads all share. */
function sharedHeads(cs: Criterion[]): string[] {
  const { numLayers: L, numHeads: H } = cs[0]!.meta.model;
  const sets = cs.map(headKeys);
  const who = (l: number, h: number) => sets.map((s, i) => (s.has(l * H + h) ? LETTERS[i] : '')).join('') || '·';
  const inAll = cs[0]!.meta.heads.filter(([l, h]) => sets.every((s) => s.has(l * H + h)));
  return [
    '  shared heads: each cell lists the criteria that select the head (· none)',
    ...grid(L, H, cs.length, who),
    `  selected by all ${cs.length}: ${inAll.length ? inAll.map(([l, h]) => `L${l}H${h}`).join(' ') : 'none'}`,
  ];
}

/** Pairwise counts of heads in common; the diagonal is each criterion's own count. */
function pairwiseOverlap(cs: Criterion[]): string[] {
  const sets = cs.map(headKeys);
  const common = (a: Set<number>, b: Set<number>) => [...a].filter((k) => b.has(k)).length;
  const w = Math.max(4, ...sets.map((s) => String(s.size).length + 1));
  return [
    '  heads in common (row × column; the diagonal: heads each selects)',
    `    ${cs.map((_, i) => LETTERS[i]!.padStart(w)).join('')}`,
    ...sets.map((a, i) => `  ${LETTERS[i]} ${sets.map((b) => String(common(a, b)).padStart(w)).join('')}`),
  ];
}
