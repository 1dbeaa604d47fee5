/**
 * The layout of every command's `--help`: required options first, then the options in groups (input, method,
 * model and weights, output, performance, and the server's own), a usage line naming the required options, and
 * examples that run from the repository root. Groups are assigned here by option name, so the command files only
 * declare their flags; an option this table does not know is listed under "Other:", never hidden.
 */
import { Option, type Command, type Help } from 'commander';

const REQUIRED = 'Required:';
const INPUT = 'Input:';
const METHOD = 'Method:';
const MODEL = 'Model and weights:';
const OUTPUT = 'Output:';
const PERFORMANCE = 'Performance:';
const REWARDS = 'Criteria and rewards:';
const HTTP = 'HTTP:';
const LIMITS = 'Limits and timeouts:';
const OTHER = 'Other:';
const GROUP_ORDER = [REQUIRED, INPUT, METHOD, MODEL, REWARDS, HTTP, LIMITS, OUTPUT, PERFORMANCE, OTHER];

/** `arm --help`'s command groups, in the order a newcomer meets them. */
const COMMAND_GROUP_ORDER = ['Activation RM:', 'Evaluation:', 'Reward server:', 'Engine:', 'Commands:'];
const COMMAND_GROUP: Record<string, string> = {
  fit: 'Activation RM:',
  score: 'Activation RM:',
  inspect: 'Activation RM:',
  render: 'Activation RM:',
  eval: 'Evaluation:',
  'bias-probe': 'Evaluation:',
  merge: 'Evaluation:',
  serve: 'Reward server:',
  forward: 'Engine:',
  generate: 'Engine:',
};

/** Option (long flag) → group, for every command unless `COMMAND_GROUPS` says otherwise. */
const OPTION_GROUPS: Record<string, string> = {
  ...groupOf(INPUT, '--examples --input --dataset --bias-pair --preferencehack --image-root --skip-invalid --limit'),
  ...groupOf(INPUT, '--subsets --prompt --input-ids --image --rm'),
  ...groupOf(METHOD, '--template --template-text --chat --no-chat --template-kwargs --passes --shots --steps'),
  ...groupOf(METHOD, '--passes-per-demo-set --samples --lr --denoise --denoise-before-selection --seed --mode'),
  ...groupOf(METHOD, '--heads --methods --few-shot --seeds --pool --icl-shots --sample-n --temperature --sav-heads'),
  ...groupOf(METHOD, '--bias --max-new-tokens --pool-label-noise'),
  ...groupOf(MODEL, '--model --revision --cache-dir --dtype --block-size --accuracy-level --int8-kernel'),
  ...groupOf(MODEL, '--int4-method --device'),
  ...groupOf(OUTPUT, '--out --output --output-dir --json --save-all --keep-all-means --resume --force --restart'),
  ...groupOf(OUTPUT, '--quiet --top'),
  ...groupOf(PERFORMANCE, '--threads --batch-size --max-length --chunk-rows --shard'),
};

/** Where a command reads an option differently from the others. */
const COMMAND_GROUPS: Record<string, Record<string, string>> = {
  forward: groupOf(OUTPUT, '--heads'),
  generate: {},
  serve: {
    ...groupOf(REWARDS, '--rm --combine --reward-readout --score-transform --too-long-reward --split-without-prompts'),
    ...groupOf(HTTP, '--host --port --api-key-file'),
    ...groupOf(PERFORMANCE, '--max-batch --max-wait-ms --max-queue'),
    ...groupOf(LIMITS, '--body-limit-mib --max-request-items --request-timeout-s --idle-timeout-s'),
    ...groupOf(LIMITS, '--keep-alive-timeout-s --max-requests-per-socket --max-connections'),
  },
};

/** Examples per command, runnable from the repository root on the bundled model (test/cli/help-layout.test.ts). */
const TINY = 'models/icl-tiny';
const TEMPLATE = '--template-text "{prompt} {response}"';
const FEW = 'examples/icl-tiny/last-low/few.jsonl';
const PAIRS = 'examples/icl-tiny/last-low/test.jsonl';
const OTHER_PAIRS = 'examples/icl-tiny/max-high/test.jsonl';
const CRITERION = 'results/last-low.arm.safetensors';
const QUICK = 'results/quick.arm.safetensors';
const EXAMPLES: Record<string, string[]> = {
  fit: [
    `npx arm fit --model ${TINY} ${TEMPLATE} --examples ${FEW} --out ${CRITERION}`,
    `npx arm fit --model ${TINY} ${TEMPLATE} --examples ${FEW} --out ${QUICK} --steps 200 --seed 1`,
    'npx arm fit --model Qwen/Qwen2.5-0.5B-Instruct --examples examples/concise/few.jsonl ' +
      '--out results/concise.arm.safetensors',
  ],
  score: [
    `npx arm score --model ${TINY} --rm ${CRITERION} --input ${PAIRS} --output results/scored.jsonl`,
    `npx arm score --model ${TINY} --rm ${CRITERION} --input ${OTHER_PAIRS} --output results/other.jsonl --quiet`,
  ],
  inspect: [
    `npx arm inspect ${CRITERION}`,
    `npx arm inspect ${CRITERION} --json`,
    `npx arm inspect ${CRITERION} ${QUICK}`,
  ],
  render: [
    `npx arm render --model ${TINY} --rm ${CRITERION} --input ${PAIRS}`,
    `npx arm render --model ${TINY} --template scalar ${TEMPLATE} --input ${PAIRS} --json`,
  ],
  eval: [
    `npx arm eval --model ${TINY} ${TEMPLATE} --dataset ${OTHER_PAIRS} --methods arm,zero-shot,random-heads ` +
      '--few-shot 16 --seeds 1 --output-dir results/eval',
    `npx arm eval --dataset ${OTHER_PAIRS} --methods pick-longer,pick-shorter --few-shot 0 --output-dir results/length`,
  ],
  merge: [
    'npx arm merge --output results/scored.jsonl',
    'npx arm merge --output-dir results/eval',
    'npx arm merge --output results/scored.jsonl results/scored.shard-0-of-2.json results/scored.shard-1-of-2.json',
  ],
  'bias-probe': [
    `npx arm bias-probe --dataset ${PAIRS} --bias length --out results/probes`,
    `npx arm bias-probe --dataset ${PAIRS} --bias length,format,positivity --out results/probes --limit 20`,
  ],
  serve: [
    `npx arm serve --model ${TINY} --rm last-low=${CRITERION} --port 5000`,
    `npx arm serve --model ${TINY} --rm a=${CRITERION} --rm b=${QUICK} --combine a=0.5,b=0.5`,
  ],
  forward: [
    `npx arm forward --model ${TINY} --prompt "w1 w2 w3 w4 w5 w6 A:" --top 5`,
    `npx arm forward --model ${TINY} --input-ids 1,10,11 --json --heads`,
  ],
  generate: [
    `npx arm generate --model ${TINY} --prompt "w1 w2 w3" --max-new-tokens 8`,
    `npx arm generate --model ${TINY} --input-ids 1,10,11 --max-new-tokens 4`,
  ],
};

function groupOf(group: string, flags: string): Record<string, string> {
  return Object.fromEntries(flags.split(' ').map((flag) => [flag, group]));
}

/** The group an option of `command` is listed under. */
function optionGroup(command: string, option: Option): string {
  if (option.mandatory) return REQUIRED;
  const flag = option.long ?? option.short ?? '';
  return COMMAND_GROUPS[command]?.[flag] ?? OPTION_GROUPS[flag] ?? OTHER;
}

/** Groups in GROUP_ORDER (options) or COMMAND_GROUP_ORDER (commands), whatever order they were declared in. */
function groupItemsInOrder<T extends Command | Option>(
  this: Help,
  unsorted: T[],
  visible: T[],
  getGroup: (item: T) => string,
): Map<string, T[]> {
  const grouped = new Map<string, T[]>();
  for (const item of visible) grouped.set(getGroup(item), [...(grouped.get(getGroup(item)) ?? []), item]);
  const order = [...GROUP_ORDER, ...COMMAND_GROUP_ORDER];
  const rank = (g: string) => (order.includes(g) ? order.indexOf(g) : order.length);
  return new Map([...grouped].sort(([a], [b]) => rank(a) - rank(b)));
}

/** The usage line: the required options spelled out, then `[options]` and the arguments. */
function usageLine(cmd: Command): string {
  const required = cmd.options.filter((o) => o.mandatory).map((o) => o.flags);
  const args = cmd.registeredArguments.map(
    (a) => (a.required ? `<${a.name()}>` : `[${a.name()}]`) + (a.variadic ? '...' : ''),
  );
  return [...required, '[options]', ...args].join(' ');
}

/** Applies the shared help layout to every subcommand of `program` (call once all are registered). */
export function applyHelpLayout(program: Command): void {
  for (const cmd of program.commands) {
    const name = cmd.name();
    if (COMMAND_GROUP[name]) cmd.helpGroup(COMMAND_GROUP[name]);
    for (const option of cmd.options) option.helpGroup(optionGroup(name, option));
    cmd.addHelpOption(new Option('-h, --help', 'show this help').helpGroup(OTHER));
    cmd.configureHelp({ groupItems: groupItemsInOrder, minWidthToWrap: 30 });
    cmd.usage(usageLine(cmd));
    cmd.showHelpAfterError(helpPointer(name));
    const examples = EXAMPLES[name];
    if (examples)
      cmd.addHelpText('after', `\nExamples (from the repository root):\n${examples.map((e) => `  ${e}`).join('\n')}\n`);
  }
  program.configureHelp({ groupItems: groupItemsInOrder, minWidthToWrap: 30 });
  program.addHelpText(
    'after',
    '\nStart with the quickstart in README.md (fit, score, eval and serve on the bundled models/icl-tiny);\n' +
      "each command's options and examples: npx arm <command> --help\n",
  );
  program.showHelpAfterError(helpPointer());
}

/** The one line printed after an error in place of the whole help. */
export function helpPointer(command?: string): string {
  return `(run "npx arm ${command ? `${command} ` : ''}--help" for the options and examples)`;
}
