/**
 * An Activation RM as a promptfoo assertion (`activation-rm/promptfoo`): a `type: javascript` assertion whose value
 * points at `activationRmAssertion` and whose `config` names the criterion and model (or a running `arm serve`),
 * the threshold and where the judged prompt comes from. It scores the provider's output against the test's prompt
 * and passes when the score reaches the threshold. docs/integrations.md shows the config.
 */
import { describe, judgeFor, outputText, promptFrom, readoutLabel, type Judge, type JudgeOptions } from './judge.js';

/** The assertion's `config`: where scores come from (JudgeOptions), the pass mark, and the prompt's source. */
export interface PromptfooAssertionConfig extends JudgeOptions {
  /** Pass when the score (P(Yes) by default) is at least this; default 0.5. */
  threshold?: number;
  /**
   * The test variable holding the prompt the output answers; default: promptfoo's rendered prompt. Needed when the
   * rendered prompt is not the question (e.g. a provider that echoes a stored answer).
   */
  promptVar?: string;
}

/** The part of promptfoo's assertion context this assertion reads (promptfoo's AssertionValueFunctionContext). */
export interface PromptfooAssertionContext {
  prompt?: string;
  vars?: Record<string, unknown>;
  config?: Record<string, unknown>;
}

/** promptfoo's GradingResult, as this assertion fills it. */
export interface PromptfooGradingResult {
  pass: boolean;
  score: number;
  reason: string;
}

const WHERE = 'activation-rm/promptfoo assertion config';
const DEFAULT_THRESHOLD = 0.5;

/** Judges by config, one per distinct config for the life of the process (the model itself is shared, judge.ts). */
const judges = new Map<string, Judge>();

function judgeOf(config: PromptfooAssertionConfig): Judge {
  const key = JSON.stringify(config);
  let judge = judges.get(key);
  if (!judge) {
    judge = judgeFor(withoutAssertionFields(config), WHERE);
    judges.set(key, judge);
  }
  return judge;
}

/** The config without the assertion's own fields, which the judge does not know. */
function withoutAssertionFields(config: PromptfooAssertionConfig): JudgeOptions {
  const { threshold: _threshold, promptVar: _promptVar, ...judge } = config;
  return judge;
}

function thresholdOf(config: PromptfooAssertionConfig): number {
  const t = config.threshold ?? DEFAULT_THRESHOLD;
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t > 1)
    throw new Error(`${WHERE}: threshold: expected a number from 0 to 1, got ${describe(t)}`);
  return t;
}

function promptOf(context: PromptfooAssertionContext, config: PromptfooAssertionConfig) {
  const { promptVar } = config;
  if (promptVar === undefined) return promptFrom(context.prompt, "the test's rendered prompt");
  if (typeof promptVar !== 'string' || promptVar === '')
    throw new Error(`${WHERE}: promptVar: expected a variable name, got ${describe(promptVar)}`);
  const vars = context.vars ?? {};
  if (!(promptVar in vars))
    throw new Error(
      `${WHERE}: promptVar: the test has no variable ${JSON.stringify(promptVar)} ` +
        `(it has: ${Object.keys(vars).join(', ') || 'none'})`,
    );
  return promptFrom(vars[promptVar], `vars.${promptVar}`);
}

/**
 * The assertion: `(output, context) → {pass, score, reason}`. The score is the criterion's P(Yes) (or the
 * normalised probability with `readout: normalized`); an output too long for the criterion's length budget fails
 * with score 0. A bad config throws (promptfoo reports the error as the assertion's failure).
 */
export async function activationRmAssertion(
  output: unknown,
  context: PromptfooAssertionContext,
): Promise<PromptfooGradingResult> {
  const config = (context?.config ?? {}) as PromptfooAssertionConfig;
  const threshold = thresholdOf(config);
  const judge = judgeOf(config);
  const scored = await judge.score(promptOf(context, config), outputText(output, 'output'));
  const what = readoutLabel(scored.readout);
  if (scored.score === null)
    return {
      pass: false,
      score: 0,
      reason: `${scored.criterion}: not scored, the output and question exceed the criterion's length budget`,
    };
  const pass = scored.score >= threshold;
  return {
    pass,
    score: scored.score,
    reason:
      `${scored.criterion}: ${what} = ${scored.score.toFixed(4)} ${pass ? '≥' : '<'} threshold ${threshold}` +
      (scored.truncated ? ' (prompt cut to fit the length budget)' : ''),
  };
}
