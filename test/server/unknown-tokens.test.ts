/**
 * The server's report of unknown tokens (src/server/unknown-tokens.ts) on the bundled icl-tiny, whose vocabulary is
 * 64 words: the README's ChatML /get_reward example is all unknown words to it. Each scoring response carries the
 * request's rate in `x-arm-unknown-token-rate` (body unchanged), a mostly unknown request is logged as a warning
 * once a minute per criterion, and /metrics counts the tokens. Expected counts are made here from the vocabulary.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import type { ActivationRM } from '../../src/arm/rm.js';
import { createRewardServer, type RewardServer } from '../../src/server/app.js';
import { InProcessEngine } from '../../src/server/engine.js';
import { tempDir } from '../helpers/fixtures.js';

const ICL_TINY = path.resolve(import.meta.dirname, '../../models/icl-tiny');
const FEW = path.resolve(import.meta.dirname, '../../examples/icl-tiny/last-low/few.jsonl');
const VOCAB = new Set(
  Object.keys(
    (JSON.parse(fs.readFileSync(path.join(ICL_TINY, 'tokenizer.json'), 'utf8')) as { model: { vocab: object } }).model
      .vocab,
  ),
);
/** Words of the judge prompt "{prompt} {response}" in icl-tiny's chat format (` {content} A:`), the unknown ones. */
function count(prompt: string, response: string): { unknown: number; text: number } {
  const words = ` ${prompt} ${response} A:`.split(/\s+/).filter(Boolean);
  return { unknown: words.filter((w) => !VOCAB.has(w)).length, text: words.length };
}

const PROMPT = '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n';
const RESPONSE = '4<|im_end|>';

let decoder: Decoder;
let rm: ActivationRM;
let server: RewardServer;
let url: string;
const log: string[] = [];

beforeAll(async () => {
  decoder = await Decoder.load(ICL_TINY, { cacheDir: tempDir('arm-cache-') });
  rm = await fitActivationRM(decoder, readExamples(FEW).examples, {
    templateText: '{prompt} {response}',
    passes: 10,
    reinforce: { steps: 2, samples: 4, readoutMasks: 2, readoutItems: 4 },
  });
  const file = path.join(tempDir(), 'last-low.arm.safetensors');
  rm.save(file);
  const engine = new InProcessEngine(decoder, [{ name: 'last-low', file, rm }]);
  server = await createRewardServer({ engine, log: (line) => log.push(line) });
  url = await server.listen({ host: '127.0.0.1', port: 0 });
  await server.warm();
}, 60_000);
afterAll(async () => {
  await server?.close();
  await decoder?.dispose();
});

async function post(route: string, body: unknown): Promise<Response> {
  return fetch(url + route, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
}

describe('unknown tokens on the server', () => {
  it('reports the rate per request, warns once a minute, and counts tokens in /metrics', async () => {
    // The split (split.ts) parses the ChatML prompt back into its user turn and cuts the response at <|im_end|>.
    const chatml = count('What is 2+2?', '4');
    expect(chatml.unknown / chatml.text).toBeGreaterThan(0.5);
    const before = log.length;
    const answers = [];
    for (let i = 0; i < 2; i++) {
      const res = await post('/get_reward', { query: [PROMPT + RESPONSE], prompts: [PROMPT] });
      expect(res.status).toBe(200);
      answers.push(res);
      expect(Object.keys((await res.json()) as object)).toEqual(['rewards', 'scores', 'extra_logs']);
    }
    for (const res of answers)
      expect(res.headers.get('x-arm-unknown-token-rate')).toBe((chatml.unknown / chatml.text).toFixed(4));
    const warnings = log.slice(before).filter((l) => l.startsWith('warning:'));
    expect(warnings).toHaveLength(1); // the second request is within the minute
    expect(warnings[0]).toContain('POST /get_reward, criterion "last-low"');
    expect(warnings[0]).toContain(`(${chatml.unknown} of ${chatml.text}) are unknown`);

    const pair = { prompt: 'w13 w18 w20', chosen: 'w21 w27 w16', rejected: 'w18 w3 w45' };
    const known = await post('/v1/score', { pairs: [pair] });
    expect(known.status).toBe(200);
    expect(known.headers.get('x-arm-unknown-token-rate')).toBe('0.0000');
    const words = count(pair.prompt, pair.chosen).text + count(pair.prompt, pair.rejected).text;

    const metrics = await (await fetch(`${url}/metrics`)).text();
    const counter = (name: string) =>
      Number(new RegExp(`^${name}\\{criterion="last-low"\\} (\\d+)$`, 'm').exec(metrics)?.[1]);
    // The scored requests' batches (the warm-up scores outside the scheduler: not counted).
    expect(counter('arm_judge_unknown_tokens_total')).toBe(2 * chatml.unknown);
    expect(counter('arm_judge_text_tokens_total')).toBe(2 * chatml.text + words);
  });
});
