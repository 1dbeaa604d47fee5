/**
 * /v1/score with images on an image-text checkpoint (the tiny Qwen2.5-VL fixture with a word-level tokenizer),
 * a criterion fitted here on synthetic shape pictures with small settings; the server in this process on a
 * loopback port. Every request is bounded by a timeout.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type Example } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { ActivationRM } from '../../src/arm/rm.js';
import { createRewardServer, type RewardServer } from '../../src/server/app.js';
import { armFields } from '../../src/server/readout.js';
import { InProcessEngine } from '../../src/server/engine.js';
import { tempDir } from '../helpers/fixtures.js';
import { imageTextCheckpoint, writeShapePairs } from '../helpers/image-text.js';

const FIT = {
  passes: 6,
  shots: 1,
  batchSize: 4,
  reinforce: { steps: 4, samples: 6, readoutMasks: 2, readoutItems: 4 },
} as const;

const cacheDir = tempDir('arm-cache-');
let data: string;
let decoder: Decoder;
let rm: ActivationRM;
const running: RewardServer[] = [];

beforeAll(async () => {
  data = tempDir('arm-shapes-');
  const { file } = await writeShapePairs(data, { colours: ['red', 'blue'], shapes: ['circle', 'square'] });
  decoder = await Decoder.load(imageTextCheckpoint('qwen2_5_vl'), { cacheDir, quiet: true });
  rm = await fitActivationRM(decoder, readExamples(file).examples, { ...FIT, seed: 1, warn: () => undefined });
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});
afterAll(() => decoder?.dispose());

async function start(imageRoot: string): Promise<string> {
  const server = await createRewardServer({
    engine: new InProcessEngine(decoder, [{ name: 'shapes', file: 'shapes.arm.safetensors', rm }]),
    imageRoot,
  });
  running.push(server);
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  await server.warm();
  return url;
}

async function post(url: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}/v1/score`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  return { status: res.status, body: await res.json() };
}

describe('/v1/score with images', () => {
  it('an item and a pair with an image score as ActivationRM.scoreExamples on the same example', async () => {
    const url = await start(data);
    const image = path.join(data, 'images', 'red-circle.png');
    const item: Example = {
      kind: 'scalar',
      id: 'a',
      line: 0,
      row: {},
      prompt: 'What shape is in the picture ?',
      response: 'a red circle',
      label: null,
      images: [image],
    };
    const pair: Example = {
      kind: 'pair',
      id: 'p',
      line: 0,
      row: {},
      prompt: 'What shape is in the picture ?',
      chosen: 'a red circle',
      rejected: 'a blue circle',
      images: [image],
    };
    const [refItem] = await rm.scoreExamples([item]);
    const [refPair] = await rm.scoreExamples([pair]);
    const [textOnly] = await rm.scoreExamples([{ ...item, images: undefined } as Example]);

    const a = await post(url, {
      items: [
        {
          id: 'a',
          prompt: 'What shape is in the picture ?',
          response: 'a red circle',
          images: ['images/red-circle.png'],
        },
      ],
    });
    expect(a.status).toBe(200);
    expect(a.body.results[0]).toEqual({ id: 'a', ...armFields(refItem!) });
    // The image changes the score (it is really in the prompt).
    expect(a.body.results[0].reward).not.toBe((textOnly as { reward: number }).reward);
    // An absolute path inside the root is the same file.
    const abs = await post(url, {
      items: [{ id: 'a', prompt: 'What shape is in the picture ?', response: 'a red circle', images: [image] }],
    });
    expect(abs.body.results[0]).toEqual(a.body.results[0]);

    const p = await post(url, {
      pairs: [
        {
          id: 'p',
          prompt: 'What shape is in the picture ?',
          chosen: 'a red circle',
          rejected: 'a blue circle',
          images: ['images/red-circle.png'],
        },
      ],
    });
    expect(p.status).toBe(200);
    expect(p.body.results[0]).toEqual({ id: 'p', ...armFields(refPair!) });
  });

  it('refuses paths outside --image-root, missing files and non-lists with a 400 naming the field', async () => {
    const url = await start(path.join(data, 'images'));
    const outside = path.join(data, 'secret.png');
    fs.copyFileSync(path.join(data, 'images', 'red-circle.png'), outside);
    fs.symlinkSync(outside, path.join(data, 'images', 'link.png'));
    const item = (images: unknown, i = 0) => ({
      items: [
        ...Array.from({ length: i }, () => ({ prompt: 'What shape ?', response: 'a red circle' })),
        { prompt: 'What shape ?', response: 'a red circle', images },
      ],
    });
    for (const [images, field] of [
      [['../secret.png'], 'items[0].images[0]'],
      [[outside], 'items[0].images[0]'],
      [['link.png'], 'items[0].images[0]'], // a symbolic link out of the root
      [['red-circle.png', '../../etc/passwd'], 'items[0].images[1]'],
    ] as const) {
      const r = await post(url, item(images));
      expect(r.status, JSON.stringify(images)).toBe(400);
      expect(r.body.field).toBe(field);
      expect(r.body.error).toMatch(/outside --image-root/);
    }
    const missing = await post(url, item(['nope.png'], 1));
    expect(missing.status).toBe(400);
    expect(missing.body.field).toBe('items[1].images[0]');
    expect(missing.body.error).toMatch(/not found/);
    const notList = await post(url, item('red-circle.png'));
    expect(notList.status).toBe(400);
    expect(notList.body.field).toBe('items[0].images');
    const pair = await post(url, {
      pairs: [{ prompt: 'What shape ?', chosen: 'a', rejected: 'b', images: ['../secret.png'] }],
    });
    expect(pair.status).toBe(400);
    expect(pair.body.field).toBe('pairs[0].images[0]');
    // A file that is not a readable image: this request's 400, before anything is queued.
    fs.writeFileSync(path.join(data, 'images', 'broken.png'), 'not a png');
    const broken = await post(url, item(['red-circle.png', 'broken.png']));
    expect(broken.status).toBe(400);
    expect(broken.body.field).toBe('items[0].images[1]');
    expect(broken.body.error).toMatch(/not a readable image/);
    // Inside the root it is accepted.
    expect((await post(url, item(['red-circle.png']))).status).toBe(200);
  });
});
