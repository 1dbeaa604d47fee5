/**
 * Every command's --help: required options first (and in the usage line), the groups in their fixed order, and
 * examples that name only the command's own options and every required one; a usage error prints the error and
 * one line pointing to --help, not the help; `arm --version` prints package.json's version.
 */
import { describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { buildProgram, main } from '../../src/cli/main.js';
import { arm } from '../helpers/cli.js';

const ORDER = ['Required:', 'Input:', 'Method:', 'Model and weights:', 'Criteria and rewards:', 'HTTP:'];
const ORDER_REST = ['Limits and timeouts:', 'Output:', 'Performance:', 'Other:'];
const GROUP_ORDER = [...ORDER, ...ORDER_REST];
const commands = buildProgram().commands;

/** The help text as sections: heading → the lines under it (up to the next blank line). */
function sections(help: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of help.split('\n')) {
    if (/^[A-Z][^:]*:( .*)?$/.test(line) && !line.startsWith('Usage:')) out.set(line, (current = []));
    else if (line === '') current = null;
    else current?.push(line);
  }
  return out;
}

/** The long flags an example line uses, and the tokens after the command name. */
const flagsOf = (example: string) => example.match(/(?<=\s)--[a-z0-9-]+/g) ?? [];

describe.each(commands.map((c) => [c.name(), c] as [string, Command]))('arm %s --help', (name, cmd) => {
  const help = cmd.helpInformation() + helpAfter(cmd);
  const groups = sections(help);
  const optionGroups = [...groups.keys()].filter((g) => GROUP_ORDER.includes(g));
  const required = cmd.options.filter((o) => o.mandatory);

  it('lists the required options first, each one in the usage line, and the groups in order', () => {
    if (required.length) {
      expect(optionGroups[0]).toBe('Required:');
      const lines = groups.get('Required:')!.filter((l) => /^ {2}-/.test(l));
      expect(lines.map((l) => l.trim().split(/\s{2,}/)[0])).toEqual(required.map((o) => o.flags));
      const usage = help.split('\n')[0]!;
      for (const o of required) expect(usage).toContain(o.flags);
    } else expect(groups.has('Required:')).toBe(false);
    const ranks = optionGroups.map((g) => GROUP_ORDER.indexOf(g));
    expect(ranks).toEqual([...ranks].sort((a, b) => a - b));
    // Every option shown once, under some group.
    const shown = optionGroups.flatMap((g) => groups.get(g)!.filter((l) => /^ {2}-/.test(l)));
    expect(shown.length).toBe(cmd.options.length + 1); // + -h, --help
  });

  it('has two or more examples that use only its options and give every required one', () => {
    const examples = groups.get('Examples (from the repository root):') ?? [];
    expect(examples.length).toBeGreaterThanOrEqual(2);
    const known = new Set(cmd.options.map((o) => o.long));
    for (const example of examples) {
      expect(example.trim().startsWith(`npx arm ${name} `)).toBe(true);
      for (const flag of flagsOf(example)) expect(known.has(flag), `${flag} in: ${example}`).toBe(true);
      for (const o of required) expect(flagsOf(example), example).toContain(o.long);
      // Inputs in the repository exist (outputs go to results/, which the examples make in this order).
      for (const input of example.match(/(?<=\s)(models|examples)\/\S+/g) ?? [])
        expect(fs.existsSync(path.resolve(import.meta.dirname, '../..', input)), input).toBe(true);
    }
  });
});

it('arm --help groups the commands: the method first, the engine last', () => {
  const program = buildProgram();
  const groups = sections(program.helpInformation());
  expect([...groups.keys()].filter((g) => g !== 'Options:')).toEqual([
    'Activation RM:',
    'Evaluation:',
    'Reward server:',
    'Engine:',
    'Commands:',
  ]);
  const listed = [...groups.values()].flat().map((l) => /^ {2}(\S+)/.exec(l)?.[1]);
  for (const c of program.commands) expect(listed).toContain(c.name());
});

/** The text addHelpText('after') adds, which helpInformation() leaves out. */
function helpAfter(cmd: Command): string {
  let text = '';
  cmd.configureOutput({ writeOut: (s) => (text += s) });
  cmd.outputHelp();
  return text.slice(cmd.helpInformation().length);
}

/** Runs main() in this process (for errors that reach its catch, which never calls process.exit): stderr, status. */
async function mainInProcess(args: string[]): Promise<{ stderr: string; exitCode: number | undefined }> {
  let stderr = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    stderr += String(s);
    return true;
  });
  const before = process.exitCode;
  try {
    await main(['node', 'arm', ...args]);
    return { stderr, exitCode: process.exitCode as number | undefined };
  } finally {
    spy.mockRestore();
    process.exitCode = before;
  }
}

describe('errors and the version', () => {
  it('a missing required option: the error and one line pointing to --help, not the help', () => {
    const r = arm(['fit', '--out', 'x.arm.safetensors'], { expectFail: true });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      "error: required option '--examples <file.jsonl>' not specified",
      '(run "npx arm fit --help" for the options and examples)',
    ]);
    expect(r.stdout).toBe('');
  });

  it("a flag's bad value: the error and the pointer, before any work", async () => {
    const r = await mainInProcess(['score', '--rm', 'a', '--input', 'b', '--output', 'c', '--batch-size', '0']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      'arm: --batch-size must be a positive integer, got "0"',
      '(run "npx arm score --help" for the options and examples)',
    ]);
  });

  it('an error from the work itself gets no pointer to --help', async () => {
    const r = await mainInProcess(['inspect', path.join(import.meta.dirname, 'no-such.arm.safetensors')]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/no-such\.arm\.safetensors/);
    expect(r.stderr).not.toMatch(/--help/);
  });

  it('arm --version prints the version in package.json', () => {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../../package.json'), 'utf8'));
    expect(arm(['--version']).stdout).toBe(`${pkg.version}\n`);
    expect(pkg.version).toMatch(/^\d+\.\d+\.\d+/);
  });
});
