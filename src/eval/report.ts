/** results.json → report.md and a self-contained report.html (inline CSS and SVG, no network). */
import type { MethodResult, Results, Score } from './aggregate.js';
import {
  DEGENERATE_NOTE,
  esc,
  intervalText,
  isDegenerate,
  PALETTE,
  pct,
  provenanceHtml,
  provenanceMarkdown,
  seedsText,
} from './report-parts.js';

/**
 * Mean ± std over the seeds that ran (no ± with one: a std of one seed is no spread); with several seeds in the run,
 * how many of them this is over ("2 seeds", "1 seed").
 */
const accCell = (s: Score, r: Results) =>
  `${pct(s.mean)}${s.perSeed.length > 1 ? ` ± ${pct(s.std)}` : ''}` +
  `${r.seeds.length > 1 ? ` (${s.perSeed.length} seed${s.perSeed.length === 1 ? '' : 's'})` : ''}`;
const ciCell = intervalText;
/** A subset's cell: accuracy, interval and the (seed, pair)s it is over. */
const subsetCell = (s: Score, r: Results) => `${accCell(s, r)} ${ciCell(s)} n=${s.n}`;
/** Whether any interval of the run has zero width (the note explaining it is then shown). */
const anyDegenerate = (r: Results) =>
  Object.values(r.methods).some((m) => isDegenerate(m.accuracy) || Object.values(m.subsets).some(isDegenerate));
/** The method's name, with what it controls for when it is a control rather than a judge. */
const nameCell = (name: string, m: MethodResult) =>
  `${name}${m.control ? ` (control: ${m.control})` : ''}${partial(m)}`;
const tiesCell = (m: MethodResult) => {
  if (!Number.isFinite(m.ties.rate)) return '–';
  const broken = m.ties.rate > 0 && Number.isFinite(m.ties.broken) && m.ties.broken > 0;
  return `${pct(m.ties.rate)}${broken ? ` (${pct(m.ties.broken)} broken)` : ''}`;
};
const diffCell = (m: MethodResult) => {
  const d = m.vsReference;
  return d ? `${d.mean >= 0 ? '+' : ''}${pct(d.mean)} [${pct(d.ci95[0])}, ${pct(d.ci95[1])}]` : '';
};
const optionalPct = (x: number | undefined) => (x === undefined ? '' : pct(x));
/** A markdown table row. */
const mdRow = (cells: string[]) => `| ${cells.join(' | ')} |`;

/** A column of the main table: its heading and each method's cell. */
interface Column {
  head: string;
  cell: (m: MethodResult) => string;
}

/**
 * The main table's columns after the method's name: accuracy, interval, the difference to the reference (when there
 * is one), coverage, all pairs, ties, margin, swap consistency, verdict accuracy, cost, pairs. A column empty in every
 * row (e.g. swap consistency without a ranked template) is left out.
 */
function mainColumns(r: Results): Column[] {
  const columns: Column[] = [
    { head: 'accuracy %', cell: (m) => accCell(m.accuracy, r) },
    { head: '95% CI', cell: (m) => ciCell(m.accuracy) },
    ...(r.reference ? [{ head: `${r.reference} − method [95% CI]`, cell: diffCell }] : []),
    { head: 'coverage', cell: (m) => pct(m.coverage.rate) },
    { head: 'all pairs', cell: (m) => pct(m.allPairs.mean) },
    { head: 'ties', cell: tiesCell },
    { head: 'margin', cell: (m) => (Number.isFinite(m.margin) ? m.margin.toFixed(4) : '–') },
    { head: 'swap-consistent', cell: (m) => optionalPct(m.swapConsistency) },
    { head: 'verdict acc.', cell: (m) => optionalPct(m.verdictAccuracy) },
    {
      head: 's / pair',
      cell: (m) => (Number.isFinite(m.cost.secondsPerPair) ? m.cost.secondsPerPair.toFixed(3) : '–'),
    },
    {
      head: 'tokens / pair',
      cell: (m) => (Number.isFinite(m.cost.forwardTokensPerPair) ? m.cost.forwardTokensPerPair.toFixed(0) : '–'),
    },
    { head: 'pairs (n)', cell: (m) => String(m.accuracy.n) },
  ];
  const ms = rows(r).map(([, m]) => m);
  return columns.filter((c, i) => i < 2 || ms.some((m) => !['', '–'].includes(c.cell(m))));
}

/** One paragraph on what the numbers are over, shared by both reports. */
function readingNotes(r: Results): string[] {
  const cs = r.commonSet;
  const notes = [
    `Accuracy is over the common set: the ${cs.pairs} of ${cs.testPairs} (seed, test pair)s that every method ` +
      `(${cs.methods.join(', ')}) could score, so all rows are over the same pairs; coverage is the share of its ` +
      'test pairs each method scored, and "all pairs" its accuracy over all of them with unscorable pairs counted ' +
      'wrong.',
    'Ties count wrong; "ties" is the share of common-set pairs whose two scores were equal, and how many of those ' +
      'the method\'s tie-break (sav-vote: summed cosine margin; sample-vote: P("Yes")) decided.',
    (r.seeds.length > 1
      ? '± is the std across the seeds that ran (how many, in brackets); '
      : 'One seed: no spread across seeds is shown; ') +
      '95% intervals are percentile bootstraps over seeds and test pairs together, ' +
      "so the few-shot draw's variation is in them; n is the (seed, test pair)s an accuracy is over.",
  ];
  if (r.poolLabelNoise > 0)
    notes.push(
      `Pool label noise ${r.poolLabelNoise}: in each few-shot pool, that fraction of the pairs (rounded to whole ` +
        'pairs) had chosen and rejected swapped before any method learned from it, the same pairs for every method ' +
        'of a seed; test pairs are never flipped.',
    );
  if (r.reference)
    notes.push(
      `"${r.reference} − method" is the paired accuracy difference on the common set with its bootstrap interval; ` +
        'an interval that excludes 0 is a difference this run can see.',
    );
  return notes;
}
/** The few-shot pool in words, with its label noise when there is some. */
const poolText = (r: Results) =>
  `few-shot pool ${r.fewShot} pairs per ${r.pool === 'global' ? 'run' : 'subset'}` +
  (r.poolLabelNoise > 0 ? `, ${r.poolLabelNoise} of them with flipped labels` : '');

/** Marks a method scored without some of its (subset, seed) runs. */
const partial = (m: MethodResult) => (m.skipped.length ? ' †' : '');
const groupWord = (r: Results) => (r.pool === 'global' ? 'pool' : 'subset');

function rows(r: Results) {
  // A method skipped everywhere has no accuracy: last, not wherever NaN lands in the sort.
  const key = (m: MethodResult) => (Number.isFinite(m.accuracy.mean) ? m.accuracy.mean : -Infinity);
  return Object.entries(r.methods).sort((a, b) => key(b[1]) - key(a[1]));
}

/** Plain-text notes: thin or dropped subsets, and what each † means. */
function dataNotes(r: Results): string[] {
  const notes: string[] = [];
  const sp = r.splits;
  for (const d of sp?.droppedGroups ?? []) {
    notes.push(
      `${r.pool === 'global' ? 'The dataset' : `Subset ${d.group}`} (${d.rows} pairs) went wholly into the ` +
        `--few-shot ${r.fewShot} pool in seed${d.seeds.length > 1 ? 's' : ''} ${d.seeds.join(', ')}: ` +
        'it is not tested there.',
    );
  }
  if (sp?.duplicatePairs) notes.push(`${sp.duplicatePairs} exact duplicate pairs were left out before splitting.`);
  if (sp?.promptSiblingsHeldOut)
    notes.push(
      `${sp.promptSiblingsHeldOut} test pairs (over all seeds) were held out because a pool pair has the same prompt.`,
    );
  if (sp?.smallSubsets.length) {
    const small = sp.smallSubsets.map((s) => `${s.subset} (${s.rows} pairs, ${s.testPairs} tested)`);
    notes.push(
      `Subsets with fewer than ${sp.minTestPairs} test pairs (fewest over seeds) have noisy accuracies: ` +
        `${small.join(', ')}.`,
    );
  }
  if (r.skipped.length) {
    notes.push(
      `† Some (${groupWord(r)}, seed) runs of this method were skipped because it could not be prepared on that ` +
        'few-shot pool (listed below); its scores cover the rest, ' +
        "so its pair count is smaller than the other methods'.",
    );
  }
  return notes;
}

const skippedWhere = (r: Results, k: Results['skipped'][number]) => (r.pool === 'global' ? 'global pool' : k.group);
const SKIPPED_NOTE =
  "Not prepared on that seed's few-shot pool for a data reason; its test pairs were not scored by that method.";

export function renderMarkdown(r: Results): string {
  const lines = [
    `# Evaluation: ${r.dataset}`,
    '',
    `Model ${r.model}; ${poolText(r)}; ${seedsText(r.seeds)}. Accuracy in %. ` +
      `Prompts cut to fit: ${r.truncatedItems} pairs; too long to score: ${r.tooLongItems}.`,
    '',
    ...readingNotes(r).map((n) => `- ${n}`),
    ...(r.budget ?? []).map((n) => `- Budget: ${n}`),
    '',
    ...mainTableMarkdown(r),
    '',
    ...(anyDegenerate(r) ? [DEGENERATE_NOTE, ''] : []),
  ];
  const notes = dataNotes(r);
  if (notes.length) lines.push(...notes.map((n) => `- ${n}`), '');
  lines.push(...subsetsMarkdown(r), ...sectionsMarkdown(r), ...benchmarkMarkdown(r));
  if (r.skipped.length) {
    lines.push(
      `## Skipped (method, ${groupWord(r)}, seed)`,
      '',
      SKIPPED_NOTE,
      '',
      `| method | ${groupWord(r)} | seed | test pairs | reason |`,
      '| --- | --- | ---: | ---: | --- |',
      ...r.skipped.map((k) => {
        const reason = k.reason.replace(/\|/g, '\\|').replace(/\n/g, ' ');
        return `| ${k.method} | ${skippedWhere(r, k)} | ${k.seed} | ${k.testPairs} | ${reason} |`;
      }),
      '',
    );
  }
  lines.push('## Methods', '', ...rows(r).map(([name, m]) => `- **${name}**: ${m.definition}`), '');
  lines.push(...provenanceMarkdown(r.provenance));
  return lines.join('\n');
}

/** The main table in markdown: header, alignment row, a row per method. */
function mainTableMarkdown(r: Results): string[] {
  const columns = mainColumns(r);
  const head = ['method', ...columns.map((c) => c.head)];
  return [
    mdRow(head),
    mdRow(head.map((_, i) => (i ? '---:' : '---'))),
    ...rows(r).map(([name, m]) => mdRow([nameCell(name, m), ...columns.map((c) => c.cell(m))])),
  ];
}

/** Accuracy per subset, when there are several. */
function subsetsMarkdown(r: Results): string[] {
  const subsets = [...new Set(Object.values(r.methods).flatMap((m) => Object.keys(m.subsets)))].sort();
  if (subsets.length <= 1) return [];
  const cell = (m: MethodResult, s: string) =>
    m.subsets[s] ? subsetCell(m.subsets[s]!, r) : m.skipped.some((k) => k.group === s) ? 'skipped' : '';
  return [
    '## Per subset',
    '',
    mdRow(['method', ...subsets]),
    mdRow(['---', ...subsets.map(() => '---:')]),
    ...rows(r).map(([name, m]) => mdRow([`${name}${partial(m)}`, ...subsets.map((s) => cell(m, s))])),
    '',
  ];
}

/** RewardBench's section scores, when the subsets are RewardBench's. */
function sectionsMarkdown(r: Results): string[] {
  const sections = [...new Set(Object.values(r.methods).flatMap((m) => Object.keys(m.sections)))];
  if (!sections.length) return [];
  return [
    "## RewardBench sections (subset accuracies weighted by RewardBench's fixed example counts, " +
      'math-prm upweighted)',
    '',
    mdRow(['method', ...sections]),
    mdRow(['---', ...sections.map(() => '---:')]),
    ...rows(r).map(([name, m]) =>
      mdRow([name, ...sections.map((s) => (m.sections[s] ? pct(m.sections[s]!.score) : ''))]),
    ),
    '',
  ];
}

/**
 * The benchmarks' own scores (RM-Bench, RewardBench 2, JudgeBench) as markdown sections; none when the dataset is
 * none of them.
 */
function benchmarkMarkdown(r: Results): string[] {
  const ranked = rows(r);
  return [...rmBenchMarkdown(ranked), ...bestOfNMarkdown(ranked), ...judgeBenchMarkdown(ranked)];
}

type Ranked = ReturnType<typeof rows>;

function rmBenchMarkdown(ranked: Ranked): string[] {
  const rm = ranked.filter(([, m]) => m.rmBench);
  if (!rm.length) return [];
  const domains = [...new Set(rm.flatMap(([, m]) => Object.keys(m.rmBench!)))].sort();
  const cells = (m: MethodResult) =>
    domains.flatMap((d) => {
      const x = m.rmBench![d];
      return x ? [pct(x.hard.score), pct(x.normal.score), pct(x.easy.score), pct(x.avg.score)] : ['', '', '', ''];
    });
  return [
    '## RM-Bench (3 chosen × 3 rejected styles per row)',
    '',
    'hard: chosen plainer than rejected (upper triangle); normal: same style; easy: chosen fancier; ' +
      'avg = mean of the three. The math domain is not in this data, so no Overall comparable with published numbers.',
    '',
    `| method | ${domains.flatMap((d) => [`${d} hard`, `${d} normal`, `${d} easy`, `${d} avg`]).join(' | ')} |`,
    `| --- |${domains.map(() => ' ---: | ---: | ---: | ---: |').join('')}`,
    ...rm.map(([name, m]) => `| ${name} | ${cells(m).join(' | ')} |`),
    '',
  ];
}

function bestOfNMarkdown(ranked: Ranked): string[] {
  const bon = ranked.filter(([, m]) => m.bestOfN);
  if (!bon.length) return [];
  const subsets = [...new Set(bon.flatMap(([, m]) => Object.keys(m.bestOfN!.subsets)))].sort();
  const cells = (m: MethodResult) =>
    subsets.map((s) => (m.bestOfN!.subsets[s] ? pct(m.bestOfN!.subsets[s]!.score) : ''));
  return [
    '## RewardBench 2 (best-of-n: the chosen response must score highest; k responses sharing the top score give ' +
      '1/k)',
    '',
    'Ties is scored by its own rule (accuracy and margins over reference and tied prompts), for methods that give ' +
      'each response its own score. Overall = mean of the subsets present.',
    '',
    `| method | ${subsets.join(' | ')} | overall |`,
    `| --- |${subsets.map(() => ' ---: |').join('')} ---: |`,
    ...bon.map(([name, m]) => `| ${name} | ${cells(m).join(' | ')} | ${pct(m.bestOfN!.overall)} |`),
    '',
  ];
}

function judgeBenchMarkdown(ranked: Ranked): string[] {
  const jb = ranked.filter(([, m]) => m.judgeBench);
  if (!jb.length) return [];
  const lines = [
    '## JudgeBench (per response set; overall over all its pairs)',
    '',
    'single: one judgment per pair, ties wrong (as reward models are scored); both orders: a pairwise judge ' +
      '(--template ranked) judged with each response first, +1 per correct verdict and −1 per wrong one, correct ' +
      'when the sum is positive.',
    '',
  ];
  const sets = [...new Set(jb.flatMap(([, m]) => Object.keys(m.judgeBench!)))].sort();
  for (const set of sets) {
    const cats = [...new Set(jb.flatMap(([, m]) => Object.keys(m.judgeBench![set] ?? {})))];
    const cell = (m: MethodResult, c: string) => {
      const x = m.judgeBench![set]?.[c];
      return x ? `${pct(x.singleGame.score)}${x.bothOrders ? ` (both orders ${pct(x.bothOrders.score)})` : ''}` : '';
    };
    lines.push(
      `### ${set}`,
      '',
      `| method | ${cats.join(' | ')} |`,
      `| --- |${cats.map(() => ' ---: |').join('')}`,
      ...jb.map(([name, m]) => `| ${name} | ${cats.map((c) => cell(m, c)).join(' | ')} |`),
      '',
    );
  }
  return lines;
}

/** Horizontal bars with interval whiskers, one group per label. */
function barChart(groups: { label: string; bars: { name: string; score: Score }[] }[], methods: string[]): string {
  const rowH = 16,
    gap = 10,
    left = 170,
    width = 420;
  let y = 20;
  const parts: string[] = [];
  for (const g of groups) {
    parts.push(`<text x="4" y="${y + 12}" font-weight="bold">${esc(g.label)}</text>`);
    y += 18;
    for (const b of g.bars) {
      const c = PALETTE[methods.indexOf(b.name) % PALETTE.length];
      const w = Number.isFinite(b.score.mean) ? b.score.mean * width : 0;
      const [lo, hi] = b.score.ci95.map((v) => left + (Number.isFinite(v) ? v * width : 0));
      const title = `${esc(b.name)}: ${pct(b.score.mean)}% ${intervalText(b.score)}, n=${b.score.n}`;
      parts.push(
        `<text x="${left - 6}" y="${y + 12}" text-anchor="end">${esc(b.name)}</text>`,
        `<rect x="${left}" y="${y + 2}" width="${w.toFixed(1)}" height="${rowH - 4}" fill="${c}">` +
          `<title>${title}</title></rect>`,
        `<line x1="${lo!.toFixed(1)}" x2="${hi!.toFixed(1)}" y1="${y + rowH / 2}" y2="${y + rowH / 2}" stroke="#000"/>`,
        `<text x="${left + width + 6}" y="${y + 12}">${pct(b.score.mean)} ${intervalText(b.score)} ` +
          `<tspan fill="#555">n=${b.score.n}</tspan></text>`,
      );
      y += rowH;
    }
    y += gap;
  }
  const axis = [0, 0.25, 0.5, 0.75, 1]
    .map((v) => {
      const x = left + v * width;
      return (
        `<line x1="${x}" x2="${x}" y1="14" y2="${y}" stroke="#ddd"/>` +
        `<text x="${x}" y="10" text-anchor="middle" font-size="10">${v * 100}%</text>`
      );
    })
    .join('');
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + 190}" height="${y}" ` +
    `font-family="sans-serif" font-size="12">${axis}${parts.join('')}</svg>`
  );
}

/**
 * A share in [0, 1] as a colour of a single-hue blue ramp (light to dark, as ColorBrewer's Blues): read by
 * lightness, so also in grey and under colour-vision deficiencies.
 */
function shareColor(share: number): string {
  const lo = [247, 251, 255],
    hi = [8, 48, 107];
  const c = lo.map((v, i) => Math.round(v + (hi[i]! - v) * Math.min(1, Math.max(0, share))));
  return `rgb(${c.join(',')})`;
}

/** The heat map's colour scale: 0% to 100% of fits in five steps, below the grid at `top`. */
function shareLegend(left: number, top: number): string {
  const steps = [0, 0.25, 0.5, 0.75, 1];
  return (
    `<text x="${left}" y="${top + 10}">share of fits using the head:</text>` +
    steps
      .map(
        (v, i) =>
          `<rect x="${left + 160 + i * 34}" y="${top}" width="34" height="12" fill="${shareColor(v)}" stroke="#999"/>` +
          `<text x="${left + 177 + i * 34}" y="${top + 24}" text-anchor="middle">${v * 100}%</text>`,
      )
      .join('')
  );
}

/** Layer × head grid: share of a method's fits that used each head, with its colour scale. */
function heatMap(counts: Record<string, number>, fits: number, shape: Results['shape']): string {
  const { layers, heads } = shape;
  const cell = Math.max(6, Math.min(18, Math.floor(560 / Math.max(heads, 1)))),
    left = 40,
    top = 20;
  const cells: string[] = [];
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < heads; h++) {
      const share = (counts[`${l},${h}`] ?? 0) / fits;
      cells.push(
        `<rect x="${left + h * cell}" y="${top + l * cell}" width="${cell - 1}" height="${cell - 1}" ` +
          `fill="${shareColor(share)}" stroke="#eee">` +
          `<title>layer ${l}, head ${h}: ${(share * 100).toFixed(0)}% of fits</title></rect>`,
      );
    }
    if (l % Math.ceil(layers / 12) === 0)
      cells.push(
        `<text x="${left - 4}" y="${top + l * cell + cell - 2}" text-anchor="end" font-size="10">L${l}</text>`,
      );
  }
  const legendTop = top + layers * cell + 8;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.max(left + heads * cell + 10, left + 340)}" ` +
    `height="${legendTop + 30}" font-family="sans-serif" font-size="10">` +
    `<text x="${left}" y="12">heads →</text>${cells.join('')}${shareLegend(left, legendTop)}</svg>`
  );
}

const STYLE =
  'body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}table{border-collapse:collapse}' +
  'td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}' +
  'figure{display:inline-block;margin:0 2em 1em 0}figcaption{font-size:12px;color:#555}dt{font-weight:bold}' +
  'table.skipped td:last-child{text-align:left}';

export function renderHtml(r: Results): string {
  const notes = dataNotes(r);
  const reading = [...readingNotes(r), ...(r.budget ?? []).map((n) => `Budget: ${n}`)];
  const charts = chartsHtml(r);
  const methods = rows(r)
    .map(([name, m]) => `<dt>${esc(name)}</dt><dd>${esc(m.definition)}</dd>`)
    .join('');
  return [
    '<!doctype html>',
    '<html lang="en"><head><meta charset="utf-8">' + `<title>activation-rm evaluation: ${esc(r.dataset)}</title>`,
    `<style>${STYLE}</style></head>`,
    '<body>',
    `<h1>Evaluation: ${esc(r.dataset)}</h1>`,
    `<p>Model <code>${esc(r.model)}</code>; ${esc(poolText(r))}; ${esc(seedsText(r.seeds))}.`,
    `Prompts cut to fit: ${r.truncatedItems} pairs; too long to score: ${r.tooLongItems}.</p>`,
    `<ul class="reading">${reading.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>`,
    mainTableHtml(r),
    anyDegenerate(r) ? `<p class="degenerate">${esc(DEGENERATE_NOTE)}</p>` : '',
    notes.length ? `<ul class="notes">${notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : '',
    '<h2>Accuracy with 95% intervals</h2>',
    charts.overall,
    charts.perSubset ? `<h2>Per subset</h2>${charts.perSubset}` : '',
    charts.maps ? `<h2>Heads (layer × head)</h2>${charts.maps}` : '',
    skippedHtml(r),
    benchmarkHtml(r),
    `<h2>Methods</h2><dl>${methods}</dl>`,
    provenanceHtml(r.provenance),
    `<p><small>generated ${esc(r.generatedAt)} by activation-rm</small></p>`,
    "<script>document.body.dataset.rendered = 'ok';</script>",
    '</body></html>',
    '',
  ].join('\n');
}

/** The accuracy bars (all pairs, and per subset when there are several) and each method's heads map. */
function chartsHtml(r: Results): { overall: string; perSubset: string; maps: string } {
  const methods = rows(r).map(([n]) => n);
  const subsets = [...new Set(Object.values(r.methods).flatMap((m) => Object.keys(m.subsets)))].sort();
  // A method skipped everywhere has no bar: an empty one would read as 0%.
  const overallBars = rows(r)
    .filter(([, m]) => m.accuracy.seeds > 0)
    .map(([name, m]) => ({ name, score: m.accuracy }));
  const overall = barChart([{ label: 'all test pairs', bars: overallBars }], methods);
  const subsetBars = (s: string) =>
    rows(r)
      .filter(([, m]) => m.subsets[s])
      .map(([name, m]) => ({ name, score: m.subsets[s]! }));
  const perSubset =
    subsets.length > 1
      ? barChart(
          subsets.map((s) => ({ label: s, bars: subsetBars(s) })),
          methods,
        )
      : '';
  const maps = rows(r)
    // A method that patches or reads no head (zero-shot, the in-context judges) has no map: an empty grid says nothing.
    .filter(([, m]) => m.headCounts && m.fits && Object.keys(m.headCounts).length > 0)
    .map(
      ([name, m]) =>
        `<figure><figcaption>${esc(name)}: heads used, share of ${m.fits} fit${m.fits === 1 ? '' : 's'}</figcaption>` +
        `${heatMap(m.headCounts!, m.fits!, r.shape)}</figure>`,
    )
    .join('');
  return { overall, perSubset, maps };
}

/** The main table in HTML; a method's definition is its name cell's tooltip. */
function mainTableHtml(r: Results): string {
  const columns = mainColumns(r);
  const head = ['method', ...columns.map((c) => c.head)];
  const body = rows(r)
    .map(
      ([name, m]) =>
        `<tr><td title="${esc(m.definition)}">${esc(nameCell(name, m))}</td>` +
        `${columns.map((c) => `<td>${esc(c.cell(m))}</td>`).join('')}</tr>`,
    )
    .join('');
  return (
    `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead>` +
    `<tbody>${body}</tbody></table>`
  );
}

/** The skipped (method, group, seed) runs in HTML; empty when none was skipped. */
function skippedHtml(r: Results): string {
  if (!r.skipped.length) return '';
  const head = ['method', groupWord(r), 'seed', 'test pairs', 'reason'];
  const body = r.skipped
    .map(
      (k) =>
        `<tr><td>${esc(k.method)}</td><td>${esc(skippedWhere(r, k))}</td><td>${k.seed}</td>` +
        `<td>${k.testPairs}</td><td>${esc(k.reason)}</td></tr>`,
    )
    .join('');
  return (
    `<h2>Skipped (method, ${groupWord(r)}, seed)</h2><p>${SKIPPED_NOTE}</p>` +
    `<table class="skipped"><thead><tr>${head.map((h) => `<th>${h}</th>`).join('')}</tr></thead>` +
    `<tbody>${body}</tbody></table>`
  );
}

/** The benchmark sections for the HTML report: the markdown tables, rendered as preformatted text (kept simple). */
function benchmarkHtml(r: Results): string {
  const md = benchmarkMarkdown(r);
  return md.length ? `<h2>Benchmark scores</h2><pre>${esc(md.join('\n'))}</pre>` : '';
}
