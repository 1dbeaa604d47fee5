/**
 * JudgeBench rows are plain pairs (../shared/data/preference/judgebench.jsonl); what is particular to them is how
 * the benchmark groups them: per response set (the subset's second part: gpt4o, claude) and per category, a
 * source prefix (ScalerLab/JudgeBench run_judge.py). src/eval/benchmarks.ts scores them that way.
 */
export const JUDGEBENCH_CATEGORIES = ['mmlu-pro', 'livebench-reasoning', 'livebench-math', 'livecodebench'] as const;

/**
 * "judgebench-gpt4o-mmlu-pro-law" → { set: "gpt4o", source: "mmlu-pro-law", category: "mmlu-pro" }; null for other
 * subsets.
 */
export function judgeBenchSubset(subset: string): { set: string; source: string; category: string | null } | null {
  const m = /^judgebench-([^-]+)-(.+)$/.exec(subset);
  if (!m) return null;
  return { set: m[1]!, source: m[2]!, category: JUDGEBENCH_CATEGORIES.find((c) => m[2]!.startsWith(c)) ?? null };
}
