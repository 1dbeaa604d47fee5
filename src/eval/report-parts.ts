/**
 * What the evaluation report and the sweep report share: number and HTML escaping, the colour-blind-safe palette,
 * how a seed count and an interval are written, and the provenance block that says how to reproduce the run.
 */
import type { Score } from './aggregate.js';
import type { Provenance } from './provenance.js';

export const pct = (x: number) => (Number.isFinite(x) ? (100 * x).toFixed(1) : '–');
export const esc = (s: string) =>
  s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/**
 * Okabe & Ito's eight colours (Color Universal Design, 2008), told apart under the common colour-vision
 * deficiencies; black last. Plots also vary the marker, so two methods never differ by colour alone.
 */
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442', '#000000'];

/** "1 seed (0)", "3 seeds (0, 1, 2)". */
export const seedsText = (seeds: number[]) =>
  `${seeds.length} seed${seeds.length === 1 ? '' : 's'}${seeds.length ? ` (${seeds.join(', ')})` : ''}`;

/** "[97.3, 98.6]"; an interval of zero width is marked (see DEGENERATE_NOTE). */
export const intervalText = (s: Score) => `[${pct(s.ci95[0])}, ${pct(s.ci95[1])}]${isDegenerate(s) ? '*' : ''}`;

/** An interval of zero width: every resample gave the same accuracy. */
export const isDegenerate = (s: Score) => s.n > 0 && s.ci95[0] === s.ci95[1];

export const DEGENERATE_NOTE =
  '* An interval of zero width (e.g. [100.0, 100.0]) means every (seed, pair) resample gave the same accuracy: the ' +
  'method was right (or wrong) on every one of its n pairs. It is not a certainty: with n pairs all right, the ' +
  'true accuracy is still only known to be above about 1 − 3/n (the rule of three, 95%).';

/** The provenance as label/value lines, in the order a reader reproduces the run. */
function provenanceEntries(p: Provenance): [string, string][] {
  const template = p.template
    ? `${JSON.stringify(p.template.text)} (${p.template.kind}${p.template.chat ? ', chat template' : ', plain text'})`
    : '(none: no method read a model)';
  return [
    ['command', p.command ?? '(library call)'],
    ['activation-rm', p.version],
    ['model', `${p.model.id}${p.model.weightsSha256 ? ` (weights sha256 ${p.model.weightsSha256})` : ''}`],
    ['template', template],
    ['seeds', seedsText(p.seeds)],
    ['dataset', `${p.dataset.title}: ${p.dataset.pairs} pairs, sha256 ${p.dataset.sha256}`],
  ];
}

export const provenanceMarkdown = (p: Provenance | undefined): string[] =>
  p ? ['## Reproduce', '', ...provenanceEntries(p).map(([k, v]) => `- ${k}: \`${v.replace(/`/g, "'")}\``), ''] : [];

export const provenanceHtml = (p: Provenance | undefined): string =>
  p
    ? '<h2>Reproduce</h2><dl class="provenance">' +
      provenanceEntries(p)
        .map(([k, v]) => `<dt>${esc(k)}</dt><dd><code>${esc(v)}</code></dd>`)
        .join('') +
      '</dl>'
    : '';
