/** The `arm` command. */
import { Command } from 'commander';
import { registerModelCommands } from './model-commands.js';
import { registerArmCommands } from './arm-commands.js';
import { registerEvalCommand } from './eval-command.js';
import { registerBiasProbeCommand } from './bias-probe-command.js';
import { registerServeCommand } from './serve-command.js';
import { registerRenderCommand } from './render-command.js';

export function buildProgram(): Command {
  const program = new Command('arm')
    .description('Activation Reward Models on local Hugging Face language models')
    .showHelpAfterError();
  registerModelCommands(program);
  registerArmCommands(program);
  registerRenderCommand(program);
  registerEvalCommand(program);
  registerBiasProbeCommand(program);
  registerServeCommand(program);
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    process.stderr.write(`arm: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
