/** The `arm` command. */
import { Command } from 'commander';
import { packageVersion } from '../eval/provenance.js';
import { applyHelpLayout, helpPointer } from './help.js';
import { registerModelCommands } from './model-commands.js';
import { registerArmCommands } from './arm-commands.js';
import { registerEvalCommand } from './eval-command.js';
import { registerBiasProbeCommand } from './bias-probe-command.js';
import { registerServeCommand } from './serve-command.js';
import { registerRenderCommand } from './render-command.js';
import { registerMergeCommand } from './merge-command.js';

export function buildProgram(): Command {
  const program = new Command('arm')
    .description('Activation Reward Models on local Hugging Face language models')
    .version(packageVersion(), '-V, --version', 'print the version of activation-rm');
  registerModelCommands(program);
  registerArmCommands(program);
  registerRenderCommand(program);
  registerEvalCommand(program);
  registerBiasProbeCommand(program);
  registerMergeCommand(program);
  registerServeCommand(program);
  applyHelpLayout(program);
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  const program = buildProgram();
  // A flag's value that fails its parser throws before the action starts: that is a usage error, so it gets the
  // pointer to --help that commander prints after its own usage errors. Errors from the work itself do not.
  let started = false;
  program.hook('preAction', () => {
    started = true;
  });
  try {
    await program.parseAsync(argv);
  } catch (e) {
    process.stderr.write(`arm: ${(e as Error).message}\n`);
    if (!started) {
      const command = program.commands.find((c) => c.name() === argv[2])?.name();
      process.stderr.write(`${helpPointer(command)}\n`);
    }
    process.exitCode = 1;
  }
}
