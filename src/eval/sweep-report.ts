/** sweep.json → sweep.md and a self-contained sweep.html (inline SVG): accuracy against the swept value. */
import type { SweepPoint, SweepResults } from './sweep.js';
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

const axisName = (s: SweepResults) => (s.axis === 'few-shot' ? 'few-shot pool size k' : 'pool label noise p');
const axisSymbol = (s: SweepResults) => (s.axis === 'few-shot' ? 'k' : 'p');

/** Methods in the order of their accuracy at the first value (best first; none there: last). */
function ordered(s: SweepResults): [string, SweepResults['methods'][string]][] {
  const at0 = (m: SweepResults['methods'][string]) => {
    const a = m.points[0]?.accuracy.mean;
    return a !== undefined && Number.isFinite(a) ? a : -Infinity;
  };
  return Object.entries(s.methods).sort((a, b) => at0(b[1]) - at0(a[1]));
}

const pointAt = (m: SweepResults['methods'][string], v: number) => m.points.find((p) => p.value === v);
const cellText = (p: SweepPoint | undefined) =>
  p && p.accuracy.seeds > 0 ? `${pct(p.accuracy.mean)} ${intervalText(p.accuracy)} n=${p.accuracy.n}` : '–';

/** What the sweep holds fixed, and how its numbers are read. */
function headline(s: SweepResults): string[] {
  const fixed =
    s.axis === 'few-shot'
      ? `pool label noise ${s.fixed.poolLabelNoise ?? 0}; every k tested on the same pairs (the split drawn for ` +
        `k = ${Math.max(...s.values)}; smaller pools are its first pairs)`
      : `few-shot pool ${s.fixed.fewShot} pairs; at each p the same flipped pool pairs for every method of a seed`;
  return [
    `Model ${s.model}; ${fixed}; ${seedsText(s.seeds)}. Accuracy in % on each value's common set, with its 95% ` +
      'interval (percentile bootstrap over seeds and test pairs) and n, the (seed, test pair)s it is over.',
    `Each value's full report is in its folder: ${s.values.map((v) => s.folders[String(v)]).join(', ')}.`,
  ];
}

const hasDegenerate = (s: SweepResults) =>
  Object.values(s.methods).some((m) => m.points.some((p) => isDegenerate(p.accuracy)));

export function renderSweepMarkdown(s: SweepResults): string {
  const sym = axisSymbol(s);
  const head = ['method', ...s.values.map((v) => `${sym} = ${v}`)];
  return [
    `# Sweep: accuracy against the ${axisName(s)} (${s.dataset})`,
    '',
    ...headline(s),
    '',
    `| ${head.join(' | ')} |`,
    `| --- |${s.values.map(() => ' ---: |').join('')}`,
    ...ordered(s).map(
      ([name, m]) =>
        `| ${name}${m.control ? ` (control: ${m.control})` : ''} | ` +
        `${s.values.map((v) => cellText(pointAt(m, v))).join(' | ')} |`,
    ),
    '',
    ...(hasDegenerate(s) ? [DEGENERATE_NOTE, ''] : []),
    ...provenanceMarkdown(s.provenance),
  ].join('\n');
}

/** Marker shapes, so that lines differ by more than colour. */
function marker(i: number, x: number, y: number, color: string): string {
  const r = 4;
  switch (i % 4) {
    case 0:
      return `<circle cx="${x}" cy="${y}" r="${r}" fill="${color}"/>`;
    case 1:
      return `<rect x="${x - r}" y="${y - r}" width="${2 * r}" height="${2 * r}" fill="${color}"/>`;
    case 2:
      return `<path d="M${x} ${y - r - 1}L${x + r + 1} ${y + r}L${x - r - 1} ${y + r}Z" fill="${color}"/>`;
    default:
      return `<path d="M${x} ${y - r - 1}L${x + r + 1} ${y}L${x} ${y + r + 1}L${x - r - 1} ${y}Z" fill="${color}"/>`;
  }
}

/** The plot's frame: the lowest accuracy shown (a multiple of 10 below every interval, at most 50), and scales. */
function frame(s: SweepResults) {
  const lows = Object.values(s.methods).flatMap((m) =>
    m.points.map((p) => p.accuracy.ci95[0]).filter((v) => Number.isFinite(v)),
  );
  const yMin = Math.min(0.5, Math.floor(Math.min(...lows, 1) * 10) / 10);
  const plot = { left: 56, top: 16, width: 480, height: 300 };
  const x = (i: number) => plot.left + ((i + 0.5) * plot.width) / s.values.length;
  const y = (acc: number) => plot.top + ((1 - acc) / (1 - yMin)) * plot.height;
  return { yMin, plot, x, y };
}

/** Accuracy (y) against the swept value (x, evenly spaced), a line per method with interval whiskers. */
function sweepPlot(s: SweepResults): string {
  const { yMin, plot, x, y } = frame(s);
  const parts: string[] = [];
  for (let t = Math.round(yMin * 10); t <= 10; t++) {
    const yy = y(t / 10).toFixed(1);
    parts.push(
      `<line x1="${plot.left}" x2="${plot.left + plot.width}" y1="${yy}" y2="${yy}" stroke="#ddd"/>`,
      `<text x="${plot.left - 6}" y="${yy}" dy="4" text-anchor="end">${t * 10}%</text>`,
    );
  }
  s.values.forEach((v, i) =>
    parts.push(`<text x="${x(i)}" y="${plot.top + plot.height + 18}" text-anchor="middle">${v}</text>`),
  );
  parts.push(
    `<text x="${plot.left + plot.width / 2}" y="${plot.top + plot.height + 38}" text-anchor="middle">` +
      `${esc(axisName(s))}</text>`,
  );
  const methods = ordered(s);
  // Each method's points sit slightly apart so that overlapping whiskers stay visible.
  const offset = (j: number) => (j - (methods.length - 1) / 2) * Math.min(4, 60 / methods.length);
  methods.forEach(([name, m], j) => {
    const color = PALETTE[j % PALETTE.length]!;
    const pts = s.values
      .map((v, i) => ({ i, p: pointAt(m, v) }))
      .filter((q): q is { i: number; p: SweepPoint } => !!q.p && Number.isFinite(q.p.accuracy.mean));
    const at = (i: number) => (x(i) + offset(j)).toFixed(1);
    parts.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2" ` +
        `points="${pts.map(({ i, p }) => `${at(i)},${y(p.accuracy.mean).toFixed(1)}`).join(' ')}"/>`,
      ...pts.map(
        ({ i, p }) =>
          `<line x1="${at(i)}" x2="${at(i)}" y1="${y(p.accuracy.ci95[0]).toFixed(1)}" ` +
          `y2="${y(p.accuracy.ci95[1]).toFixed(1)}" stroke="${color}"/>` +
          `<g><title>${esc(name)} at ${axisSymbol(s)} = ${p.value}: ${cellText(p)}</title>` +
          `${marker(j, Number(at(i)), Number(y(p.accuracy.mean).toFixed(1)), color)}</g>`,
      ),
    );
    const ly = plot.top + 8 + 20 * j;
    parts.push(
      `<line x1="${plot.left + plot.width + 16}" x2="${plot.left + plot.width + 40}" y1="${ly}" y2="${ly}" ` +
        `stroke="${color}" stroke-width="2"/>${marker(j, plot.left + plot.width + 28, ly, color)}` +
        `<text x="${plot.left + plot.width + 46}" y="${ly + 4}">${esc(name)}</text>`,
    );
  });
  const height = Math.max(plot.top + plot.height + 48, plot.top + 20 * methods.length + 16);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${plot.left + plot.width + 200}" height="${height}" ` +
    `font-family="sans-serif" font-size="12" role="img" aria-label="accuracy against ${esc(axisName(s))}">` +
    `${parts.join('')}</svg>`
  );
}

const STYLE =
  'body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}table{border-collapse:collapse}' +
  'td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}' +
  'dt{font-weight:bold}dl.provenance dd{margin:0 0 .4em 1em;word-break:break-all}';

export function renderSweepHtml(s: SweepResults): string {
  const sym = axisSymbol(s);
  const head = ['method', ...s.values.map((v) => `${sym} = ${v}`)];
  const body = ordered(s)
    .map(
      ([name, m]) =>
        `<tr><td title="${esc(m.definition)}">${esc(name)}</td>` +
        `${s.values.map((v) => `<td>${esc(cellText(pointAt(m, v)))}</td>`).join('')}</tr>`,
    )
    .join('');
  return [
    '<!doctype html>',
    `<html lang="en"><head><meta charset="utf-8"><title>activation-rm sweep: ${esc(s.dataset)}</title>`,
    `<style>${STYLE}</style></head>`,
    '<body>',
    `<h1>Accuracy against the ${esc(axisName(s))}: ${esc(s.dataset)}</h1>`,
    ...headline(s).map((l) => `<p>${esc(l)}</p>`),
    sweepPlot(s),
    `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${body}</tbody></table>`,
    hasDegenerate(s) ? `<p>${esc(DEGENERATE_NOTE)}</p>` : '',
    provenanceHtml(s.provenance),
    `<p><small>generated ${esc(s.generatedAt)} by activation-rm</small></p>`,
    "<script>document.body.dataset.rendered = 'ok';</script>",
    '</body></html>',
    '',
  ].join('\n');
}
