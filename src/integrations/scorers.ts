/**
 * An Activation RM as a scorer of the TypeScript eval libraries (`activation-rm/scorers`): evalite's
 * `createScorer({name, scorer})` options (evaliteScorer) and an autoevals-shaped function (autoevalsScorer) that
 * takes `{input, output, expected?}` and returns `{name, score, metadata}` (also accepted by evalite as it is).
 * The input is the prompt the output answers. docs/integrations.md shows both.
 */
import type { Prompt } from '../data/examples.js';
import { criterionNameOf } from '../arm/criterion.js';
import {
  describe,
  judgeFor,
  outputText,
  promptFrom,
  readoutLabel,
  type JudgeOptions,
  type JudgeScore,
} from './judge.js';

export interface ScorerOptions extends JudgeOptions {
  /** The score's name in reports; default `activation-rm:<criterion>`. */
  name?: string;
  /** The prompt in an eval's `input`; default: the input itself when a string or message list, else `input.prompt`. */
  prompt?: (input: unknown) => Prompt;
}

/** What the scorers are called with (evalite's ScoreInput; autoevals' scorer arguments). */
export interface ScorerArgs {
  input: unknown;
  output: unknown;
  expected?: unknown;
}

/** The score's fields besides the number: the criterion, its readout and the fields `arm score` writes. */
export type ScoreMetadata = Omit<JudgeScore, 'score'>;

/** autoevals' Score: `score` is null for an output too long to score (evalite counts null as 0). */
export interface AutoevalsScore {
  name: string;
  score: number | null;
  metadata: ScoreMetadata;
}

/** evalite's ScorerOpts, for `createScorer(...)` or as an entry of `scorers`. */
export interface EvaliteScorerOptions {
  name: string;
  description: string;
  scorer: (args: ScorerArgs) => Promise<{ score: number; metadata: ScoreMetadata }>;
}

const WHERE = 'activation-rm/scorers options';

function defaultPrompt(input: unknown): Prompt {
  if (typeof input === 'string' || Array.isArray(input)) return promptFrom(input, 'input');
  if (input !== null && typeof input === 'object' && 'prompt' in input)
    return promptFrom((input as { prompt: unknown }).prompt, 'input.prompt');
  throw new Error(
    `${WHERE}: input: expected the prompt (a string, a message list or {prompt}), got ${describe(input)}; ` +
      'pass a "prompt" option to pick it from your inputs',
  );
}

function scoreNameOf(options: ScorerOptions): string {
  if (options.name !== undefined) return options.name;
  const criterion = options.url ? (options.serverCriterion ?? 'arm') : criterionNameOf(options.criterion ?? 'arm');
  return `activation-rm:${criterion}`;
}

/**
 * The autoevals-shaped scorer: `({input, output}) → {name, score, metadata}`, score = P(Yes) of `output` as an
 * answer to the prompt in `input`. The model (in-process) loads on the first call, once per process.
 */
export function autoevalsScorer(options: ScorerOptions): (args: ScorerArgs) => Promise<AutoevalsScore> {
  const { name: _name, prompt: pick = defaultPrompt, ...judgeOptions } = options ?? ({} as ScorerOptions);
  const judge = judgeFor(judgeOptions, WHERE);
  const name = scoreNameOf(options);
  return async ({ input, output }) => {
    const { score, ...metadata } = await judge.score(pick(input), outputText(output, 'output'));
    return { name, score, metadata };
  };
}

/** evalite's scorer options (`createScorer(evaliteScorer({...}))`): as autoevalsScorer, too long scoring 0. */
export function evaliteScorer(options: ScorerOptions): EvaliteScorerOptions {
  const score = autoevalsScorer(options);
  const readout = readoutLabel(options.readout);
  return {
    name: scoreNameOf(options),
    description: `Activation RM ${readout} of the output as an answer to the input`,
    scorer: async (args) => {
      const s = await score(args);
      return { score: s.score ?? 0, metadata: s.metadata };
    },
  };
}

export { closeJudges } from './judge.js';
