/** `arm generate` and `arm forward`: the engine from the command line. */
import type { Command } from 'commander';
import { addModelOptions, loadDecoder, positiveInt, type ModelCliOptions } from './common.js';

interface PromptOptions extends ModelCliOptions { prompt: string; chat?: boolean }

export function registerModelCommands(program: Command): void {
  addModelOptions(program.command('generate').description('greedy continuation of a prompt'))
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--chat', 'wrap the prompt in the chat template as one user turn')
    .option('--max-new-tokens <n>', 'tokens to generate', (v) => positiveInt(v, '--max-new-tokens'), 64)
    .option('--json', 'print {"inputIds", "outputIds", "text"} instead of text')
    .action(async (o: PromptOptions & { maxNewTokens: number; json?: boolean }) => {
      const decoder = await loadDecoder(o);
      try {
        const inputIds = decoder.encodePrompt(o.prompt, { chat: o.chat });
        const outputIds = await decoder.generate(inputIds, { maxNewTokens: o.maxNewTokens });
        const text = decoder.tokenizer.decode([...inputIds, ...outputIds]);
        process.stdout.write(o.json ? `${JSON.stringify({ inputIds, outputIds, text })}\n` : `${text}\n`);
      } finally {
        await decoder.dispose();
      }
    });

  addModelOptions(program.command('forward').description('one forward pass: top next-token logits at the last prompt position'))
    .requiredOption('--prompt <text>', 'prompt text (tokenized as the tokenizer does by default, BOS included)')
    .option('--chat', 'apply the chat template first (one user turn + generation prompt)')
    .option('--top <k>', 'how many top tokens', (v) => positiveInt(v, '--top'), 5)
    .option('--heads', 'include the last-position head activations [layer][head][d]')
    .option('--json', 'print one JSON object')
    .action(async (o: PromptOptions & { top: number; heads?: boolean; json?: boolean }) => {
      const decoder = await loadDecoder(o);
      try {
        const inputIds = decoder.encodePrompt(o.prompt, { chat: o.chat });
        const out = await decoder.forward([inputIds]);
        const order = Array.from(out.logits.keys()).sort((a, b) => out.logits[b]! - out.logits[a]!).slice(0, o.top);
        const top = order.map((id) => ({ id, logit: out.logits[id]! }));
        if (o.json) {
          const result: Record<string, unknown> = { inputIds, top };
          if (o.heads) {
            const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
            result.heads = Array.from({ length: L }, (_, l) => Array.from({ length: H }, (_, h) => Array.from(out.heads.subarray((l * H + h) * d, (l * H + h + 1) * d))));
          }
          process.stdout.write(`${JSON.stringify(result)}\n`);
          return;
        }
        console.log(`input ids (${inputIds.length}): ${inputIds.join(' ')}`);
        console.table(top.map((t) => ({ id: t.id, token: JSON.stringify(decoder.tokenizer.decode([t.id], { skipSpecialTokens: false })), logit: Number(t.logit.toFixed(4)) })));
        if (o.heads) console.log('(--heads is printed with --json)');
      } finally {
        await decoder.dispose();
      }
    });
}
