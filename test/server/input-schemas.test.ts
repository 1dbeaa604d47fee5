/**
 * The JSON Schemas of the input files (docs/schemas/: few-shot examples, items to score, evaluation datasets) against
 * the readers that really read them (src/data): every bundled example file is accepted by both, and rows the readers
 * refuse are refused by the schema too (each row is checked with the reader as well, so the list cannot drift from
 * what the readers do). The schemas are checked by fastify's validator (ajv, draft-07), the one the server uses.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { loadDataset } from '../../src/data/dataset.js';
import { readExamples } from '../../src/data/examples.js';
import { tempDir } from '../helpers/fixtures.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const KINDS = ['examples', 'items', 'dataset'] as const;
type Kind = (typeof KINDS)[number];

/** POST /<kind> validates its body against docs/schemas/<kind>.schema.json: 200 accepted, 400 refused. */
async function validators(): Promise<FastifyInstance> {
  const app = Fastify({ ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } } });
  for (const kind of KINDS) {
    const schema = JSON.parse(
      fs.readFileSync(path.join(ROOT, 'docs/schemas', `${kind}.schema.json`), 'utf8'),
    ) as object;
    app.post(`/${kind}`, { schema: { body: schema } }, async () => ({ ok: true }));
  }
  await app.ready();
  return app;
}

async function schemaAccepts(app: FastifyInstance, kind: Kind, row: unknown): Promise<boolean> {
  const res = await app.inject({ method: 'POST', url: `/${kind}`, payload: JSON.stringify(row), headers: json });
  expect([200, 400]).toContain(res.statusCode);
  return res.statusCode === 200;
}
const json = { 'content-type': 'application/json' };

/** Whether the reader of `kind` reads a file holding `row` alone. */
async function readerAccepts(kind: Kind, row: unknown): Promise<boolean> {
  const file = path.join(tempDir('arm-schema-'), 'rows.jsonl');
  fs.writeFileSync(file, `${JSON.stringify(row)}\n`);
  try {
    if (kind === 'dataset') await loadDataset(file);
    else readExamples(file, { labelsOptional: kind === 'items' });
    return true;
  } catch (e) {
    expect((e as Error).name).toBe('DataError');
    return false;
  }
}

/** The bundled JSONL files, by what they are read as. */
function bundled(): [Kind, string][] {
  const found = (dir: string) =>
    fs
      .readdirSync(path.join(ROOT, dir), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.jsonl'))
      .map((f) => path.join(ROOT, dir, f));
  const files = found('examples');
  expect(files.length).toBeGreaterThanOrEqual(4);
  return files.flatMap((f): [Kind, string][] => {
    const name = path.basename(f);
    if (name === 'few.jsonl') return [['examples', f]];
    if (name === 'items.jsonl') return [['items', f]];
    return [
      ['items', f],
      ['dataset', f],
    ];
  });
}

describe('docs/schemas', () => {
  it('accept every row of the bundled example files, which the readers read', async () => {
    const app = await validators();
    for (const [kind, file] of bundled()) {
      const rows = fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as unknown);
      if (kind === 'dataset') expect((await loadDataset(file)).examples.length).toBeGreaterThan(0);
      else expect(readExamples(file, { labelsOptional: kind === 'items' }).examples).toHaveLength(rows.length);
      for (const [i, row] of rows.entries())
        expect([kind, path.relative(ROOT, file), i + 1, await schemaAccepts(app, kind, row)]).toEqual([
          kind,
          path.relative(ROOT, file),
          i + 1,
          true,
        ]);
    }
  });

  it('refuse the rows the readers refuse, and accept the forms they accept', async () => {
    const app = await validators();
    const turns = (...contents: [string, string][]) => contents.map(([role, content]) => ({ role, content }));
    // [row, accepted as examples (fit), as items (score), as a dataset row (eval)]
    const cases: [unknown, boolean, boolean, boolean][] = [
      [{ prompt: 'p', chosen: 'a', rejected: 'b', id: 'x', subset: 's' }, true, true, true],
      [{ question: 'p', chosen: 'a', rejected: 'b' }, true, true, true],
      [{ prompt: turns(['user', 'p']), chosen: 'a', rejected: 'b' }, true, true, true],
      [
        { chosen: turns(['user', 'p'], ['assistant', 'a']), rejected: turns(['user', 'p'], ['assistant', 'b']) },
        true,
        true,
        true,
      ],
      [{ prompt: 'p', response: 'r', label: 'Yes' }, true, true, true],
      [{ prompt: 'p', response: 'r', label: 0 }, true, true, true],
      [{ prompt: 'p', response: 'r', label: false }, true, true, true],
      [{ prompt: 'p', response: 'r' }, false, true, false],
      [{ prompt: 'p', chosen: ['a', 'b'], rejected: ['c'] }, false, false, true],
      [[1, 2], false, false, false],
      [{ prompt: 'p', chosen: 'a' }, false, false, false],
      [{ chosen: 'a', rejected: 'b' }, false, false, false],
      [{ prompt: '  ', chosen: 'a', rejected: 'b' }, false, false, false],
      [{ prompt: [], chosen: 'a', rejected: 'b' }, false, false, false],
      [{ prompt: [{ content: 'x' }], chosen: 'a', rejected: 'b' }, false, false, false],
      [{ prompt: 'p', chosen: 5, rejected: 'b' }, false, false, false],
      [{ prompt: 'p', response: 'r', label: 'maybe' }, false, false, false],
      [{ prompt: 'p', response: 'r', label: 'yes', images: ['a.png'], image: 'b.png' }, false, false, false],
      [{ prompt: 'p', chosen: 'a', rejected: 'b', images: ['https://example.invalid/a.png'] }, false, false, false],
      [
        { prompt: 'p', chosen: [{ role: 'assistant', content: [{ type: 'image', path: 'a.png' }] }], rejected: 'b' },
        false,
        false,
        false,
      ],
      [{ prompt: 'p', chosen: ['a', ' '], rejected: ['c'] }, false, false, false],
      [{ text: 'hello' }, false, false, false],
    ];
    for (const [row, ...expected] of cases) {
      const text = JSON.stringify(row);
      for (const [k, kind] of KINDS.entries()) {
        expect([text, kind, 'reader', await readerAccepts(kind, row)]).toEqual([text, kind, 'reader', expected[k]]);
        expect([text, kind, 'schema', await schemaAccepts(app, kind, row)]).toEqual([
          text,
          kind,
          'schema',
          expected[k],
        ]);
      }
    }
  });
});
