/** `--rm [name=]file`, repeatable, as `arm score` and `arm serve` take it: criteria by name and file. */
import fs from 'node:fs';
import { criterionNameOf } from '../arm/criterion.js';

/** Collects a repeated option's values (commander's argParser). */
export const collectValues = (v: string, acc: string[] = []): string[] => [...acc, v];

/** One `--rm` value: `name=file`, or a file named after itself (`concise.arm.safetensors` → concise). */
function parseRmSpec(spec: string): { name: string; file: string; named: boolean } {
  const eq = spec.indexOf('=');
  // A path may itself hold "=": only a name made of word characters counts as one.
  if (eq > 0 && /^[\w.-]+$/.test(spec.slice(0, eq)))
    return { name: spec.slice(0, eq), file: spec.slice(eq + 1), named: true };
  return { name: criterionNameOf(spec), file: spec, named: false };
}

/** The criteria of the `--rm` values: names unique, files present; `named`: some value gave a name. */
export function criterionArgs(values: readonly string[]): {
  criteria: { name: string; file: string }[];
  named: boolean;
} {
  if (values.length === 0) throw new Error("required option '--rm <[name=]file>' not specified");
  const specs = values.map(parseRmSpec);
  const names = specs.map((c) => c.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`--rm: the name "${dup}" is given twice`);
  for (const c of specs) if (!fs.existsSync(c.file)) throw new Error(`--rm ${c.name}=${c.file}: no such file`);
  return { criteria: specs.map(({ name, file }) => ({ name, file })), named: specs.some((c) => c.named) };
}
