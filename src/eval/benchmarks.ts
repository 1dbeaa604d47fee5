/**
 * Benchmarks' own scores, rebuilt from a method's pair records (the harness scores every benchmark as pairs):
 *
 * - RM-Bench (THU-KEG/RM-Bench, scripts/utils.py compute_accuracy): per row a 3×3 matrix of chosen style i vs
 *   rejected style j (concise, detailed, markdown), 1 when chosen scores strictly higher. hard = the upper
 *   triangle (chosen plainer than rejected), normal = the diagonal, easy = the lower triangle; a domain's score
 *   is the mean of the three. Domains: chat, code, math, safety (safety-refuse and safety-response pooled, as
 *   `domain.startswith("safety")` pools them there).
 * - RewardBench 2 (allenai/reward-bench, rewardbench/utils.py reroll_and_score_dataset): best-of-N, the chosen
 *   response must score highest of all; when k responses share the top score, the chosen one gets 1/k. The
 *   Ties subset has its own score (process_single_model): 0.3·tied accuracy + 0.3·reference accuracy +
 *   0.2·correctness preferred + 0.2·correctness preferred (hard) + 0.01·margin term. The leaderboard score is
 *   the mean of the subsets' scores.
 * - JudgeBench (ScalerLab/JudgeBench, run_judge.py and utils/metrics.py): per response set (gpt4o, claude),
 *   accuracy per category (mmlu-pro, livebench-reasoning, livebench-math, livecodebench, by source prefix) and
 *   overall over all pairs; reward models one judgment per pair, pairwise judges both orders (bothOrderOutcome).
 *
 * Only rows whose every comparison is in the records (the common set) count, per seed; values are means over
 * seeds, intervals bootstrap seeds and rows together.
 */
import { bootstrapSeedsAndPairs } from './metrics.js';
import { bothOrderOutcome, type PairRunRecord } from './records.js';
import { JUDGEBENCH_CATEGORIES, judgeBenchSubset } from '../data/judgebench.js';

interface BenchScore {
  score: number;
  rows: number;
  ci95: [number, number];
}

/** Mean over seeds of per-row values, with the seeds-and-rows bootstrap interval. */
function benchScore(perSeedRows: number[][], bootstrapSeed = 3): BenchScore {
  const seeds = perSeedRows.filter((x) => x.length);
  const means = seeds.map((x) => x.reduce((a, b) => a + b, 0) / x.length);
  return {
    score: means.length ? means.reduce((a, b) => a + b, 0) / means.length : NaN,
    rows: seeds.reduce((a, x) => a + x.length, 0),
    ci95: bootstrapSeedsAndPairs(seeds, { seed: bootstrapSeed }),
  };
}

/** The complete multi-response rows of each seed: row id → its cell records, only rows with every cell present. */
function completeRows(
  records: PairRunRecord[],
  scoring: 'rm-bench' | 'best-of-n',
): Map<number, Map<string, PairRunRecord[]>> {
  const bySeed = new Map<number, Map<string, PairRunRecord[]>>();
  for (const r of records) {
    if (r.cell?.scoring !== scoring) continue;
    if (!bySeed.has(r.seed)) bySeed.set(r.seed, new Map());
    const rows = bySeed.get(r.seed)!;
    if (!rows.has(r.cell.row)) rows.set(r.cell.row, []);
    rows.get(r.cell.row)!.push(r);
  }
  for (const rows of bySeed.values()) {
    for (const [row, cells] of rows) {
      const c = cells[0]!.cell!;
      if (new Set(cells.map((x) => `${x.cell!.chosen},${x.cell!.rejected}`)).size !== c.cells) rows.delete(row);
    }
  }
  return bySeed;
}

export interface RmBenchDomain {
  hard: BenchScore;
  normal: BenchScore;
  easy: BenchScore;
  avg: BenchScore;
  matrix: number[][];
}

/** RM-Bench domain of a subset name: "rm-bench-safety-refuse" → "safety". */
function rmBenchDomain(subset: string): string {
  const rest = subset.replace(/^rm-bench-/, '');
  return ['chat', 'math', 'code', 'safety'].find((d) => rest.startsWith(d)) ?? rest;
}

export function rmBenchScores(records: PairRunRecord[]): Record<string, RmBenchDomain> | undefined {
  const bySeed = completeRows(records, 'rm-bench');
  const domains = new Set<string>();
  for (const rows of bySeed.values()) for (const cells of rows.values()) domains.add(rmBenchDomain(cells[0]!.subset));
  if (!domains.size) return undefined;
  const out: Record<string, RmBenchDomain> = {};
  for (const domain of [...domains].sort()) {
    const parts = { hard: [] as number[][], normal: [] as number[][], easy: [] as number[][], avg: [] as number[][] };
    const matrix = [0, 1, 2].map(() => [0, 0, 0]);
    let matrixRows = 0;
    for (const rows of bySeed.values()) {
      const seedParts = { hard: [] as number[], normal: [] as number[], easy: [] as number[], avg: [] as number[] };
      for (const cells of rows.values()) {
        if (rmBenchDomain(cells[0]!.subset) !== domain) continue;
        const m = [0, 1, 2].map(() => [0, 0, 0]);
        for (const c of cells) m[c.cell!.chosen]![c.cell!.rejected] = c.correct ? 1 : 0;
        const hard = (m[0]![1]! + m[0]![2]! + m[1]![2]!) / 3,
          normal = (m[0]![0]! + m[1]![1]! + m[2]![2]!) / 3,
          easy = (m[1]![0]! + m[2]![0]! + m[2]![1]!) / 3;
        seedParts.hard.push(hard);
        seedParts.normal.push(normal);
        seedParts.easy.push(easy);
        seedParts.avg.push((hard + normal + easy) / 3);
        for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) matrix[i]![j]! += m[i]![j]!;
        matrixRows++;
      }
      for (const k of ['hard', 'normal', 'easy', 'avg'] as const) parts[k].push(seedParts[k]);
    }
    out[domain] = {
      hard: benchScore(parts.hard),
      normal: benchScore(parts.normal),
      easy: benchScore(parts.easy),
      avg: benchScore(parts.avg),
      matrix: matrix.map((row) => row.map((v) => (matrixRows ? v / matrixRows : NaN))),
    };
  }
  return out;
}

/** One comparison's outcome: a win, a tie (equal scores no tie-break decided) or a loss (also: unscorable). */
function cellOutcome(r: PairRunRecord): 'win' | 'tie' | 'loss' {
  if (r.correct) return 'win';
  const tied = r.chosen === r.rejected && (!r.tieBreak || r.tieBreak.chosen === r.tieBreak.rejected);
  return tied ? 'tie' : 'loss';
}

/**
 * Best-of-N credit of a row from its comparisons of the first chosen response with every rejected one: 0 when any
 * rejected scores higher, else 1/k with k the responses sharing the top score (the chosen one and its ties).
 */
function bestOfNCredit(cells: PairRunRecord[]): number {
  const outcomes = cells.filter((c) => c.cell!.chosen === 0).map(cellOutcome);
  if (outcomes.includes('loss')) return 0;
  return 1 / (1 + outcomes.filter((o) => o === 'tie').length);
}

interface TiesScore {
  score: number;
  refAccuracy: number;
  tiedAccuracy: number;
  correctnessPreferred: number;
  correctnessPreferredHard: number;
  marginScore: number;
  prompts: number;
}

/**
 * RewardBench 2's Ties score from pointwise scores. Row ids are "ref:<n>" (one correct answer) and "tied:<n>"
 * (several). Needs one score per response: a method whose pair scores are not pointwise (a pairwise judge) has none.
 */
function tiesScore(rows: Map<string, PairRunRecord[]>): TiesScore | null {
  const stats = new Map<string, { accurate: boolean; spread: number; gap: number }>();
  for (const [row, cells] of rows) {
    const chosen = new Map<number, number>(),
      rejected = new Map<number, number>();
    for (const c of cells) {
      for (const [map, k, v] of [
        [chosen, c.cell!.chosen, c.chosen],
        [rejected, c.cell!.rejected, c.rejected],
      ] as const) {
        if (map.has(k) && map.get(k) !== v) return null; // not one score per response
        map.set(k, v);
      }
    }
    const good = [...chosen.values()],
      bad = [...rejected.values()];
    if (!good.length || !bad.length || [...good, ...bad].some((v) => !Number.isFinite(v))) continue;
    const gap = Math.min(...good) - Math.max(...bad);
    stats.set(row, { accurate: gap > 0, spread: good.length > 1 ? Math.max(...good) - Math.min(...good) : 0, gap });
  }
  const of = (kind: string) =>
    [...stats].filter(([id]) => id.startsWith(`${kind}:`)).map(([id, s]) => [id.slice(kind.length + 1), s] as const);
  const ref = new Map(of('ref')),
    tied = new Map(of('tied'));
  if (!ref.size && !tied.size) return null;
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  const both = [...tied.keys()].filter((k) => ref.has(k));
  const hardGap = (k: string) => Math.min(ref.get(k)!.gap, tied.get(k)!.gap);
  const refAccuracy = mean([...ref.values()].map((s) => Number(s.accurate)));
  const tiedAccuracy = mean([...tied.values()].map((s) => Number(s.accurate)));
  const correctnessPreferred = mean(both.map((k) => Number(tied.get(k)!.gap > tied.get(k)!.spread)));
  const correctnessPreferredHard = mean(both.map((k) => Number(hardGap(k) > tied.get(k)!.spread)));
  // tanh(gap / spread − 1); a zero spread gives ±Inf or NaN there, and NaN counts 0.
  const marginScore = mean(
    both.map((k) => {
      const v = Math.tanh(hardGap(k) / tied.get(k)!.spread - 1);
      return Number.isNaN(v) ? 0 : v;
    }),
  );
  return {
    score:
      0.3 * tiedAccuracy +
      0.3 * refAccuracy +
      0.2 * correctnessPreferred +
      0.2 * correctnessPreferredHard +
      0.01 * marginScore,
    refAccuracy,
    tiedAccuracy,
    correctnessPreferred,
    correctnessPreferredHard,
    marginScore,
    prompts: both.length,
  };
}

export interface BestOfNResult {
  /** Per subset: mean best-of-N credit (Ties: its own score, when the method's scores are pointwise). */
  subsets: Record<string, BenchScore>;
  ties?: TiesScore;
  /** Mean of the subset scores (RewardBench 2's leaderboard score when all six subsets are present). */
  overall: number;
}

const isTiesSubset = (s: string) => s.toLowerCase() === 'ties';

export function bestOfNScores(records: PairRunRecord[]): BestOfNResult | undefined {
  const bySeed = completeRows(records, 'best-of-n');
  const subsets = new Set<string>();
  for (const rows of bySeed.values()) for (const cells of rows.values()) subsets.add(cells[0]!.subset);
  if (!subsets.size) return undefined;
  const out: BestOfNResult = { subsets: {}, overall: NaN };
  for (const subset of [...subsets].sort()) {
    if (isTiesSubset(subset)) {
      // Ties is a score over the whole subset, not per row: per seed, then averaged; no interval.
      const perSeed = [...bySeed.values()].map((rows) =>
        tiesScore(new Map([...rows].filter(([, c]) => isTiesSubset(c[0]!.subset)))),
      );
      if (perSeed.some((t) => t === null)) continue;
      const ties = perSeed as TiesScore[];
      out.ties = ties[0];
      const rowsCount = [...bySeed.values()].reduce(
        (a, rows) => a + [...rows.values()].filter((c) => isTiesSubset(c[0]!.subset)).length,
        0,
      );
      out.subsets[subset] = {
        score: ties.reduce((a, t) => a + t.score, 0) / ties.length,
        rows: rowsCount,
        ci95: [NaN, NaN],
      };
      continue;
    }
    out.subsets[subset] = benchScore(
      [...bySeed.values()].map((rows) => [...rows.values()].filter((c) => c[0]!.subset === subset).map(bestOfNCredit)),
    );
  }
  const scores = Object.values(out.subsets).map((s) => s.score);
  out.overall = scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : NaN;
  return out;
}

export interface JudgeBenchCell {
  singleGame: BenchScore;
  bothOrders?: BenchScore;
}

/** Per response set ("gpt4o", "claude"): per category and "overall". */
export function judgeBenchScores(records: PairRunRecord[]): Record<string, Record<string, JudgeBenchCell>> | undefined {
  const parsed = records.map((r) => ({ r, jb: judgeBenchSubset(r.subset) })).filter((x) => x.jb);
  if (!parsed.length) return undefined;
  const seeds = [...new Set(parsed.map((x) => x.r.seed))].sort((a, b) => a - b);
  const out: Record<string, Record<string, JudgeBenchCell>> = {};
  for (const set of [...new Set(parsed.map((x) => x.jb!.set))].sort()) {
    out[set] = {};
    for (const category of [...JUDGEBENCH_CATEGORIES, 'overall']) {
      // overall: every pair of the set (a micro-average), as run_judge.py's empty source prefix selects.
      const recs = parsed
        .filter((x) => x.jb!.set === set && (category === 'overall' || x.jb!.category === category))
        .map((x) => x.r);
      if (!recs.length) continue;
      const perSeed = (f: (r: PairRunRecord) => boolean) =>
        seeds.map((s) => recs.filter((r) => r.seed === s).map((r) => Number(f(r))));
      const cell: JudgeBenchCell = { singleGame: benchScore(perSeed((r) => r.correct)) };
      if (recs.every((r) => r.orders)) cell.bothOrders = benchScore(perSeed((r) => bothOrderOutcome(r.orders!)));
      out[set]![category] = cell;
    }
  }
  return out;
}
