/**
 * `arm fit`, `arm score`, `arm inspect`: the Activation RM from the command line. Fitting is fit-command.ts,
 * streamed scoring score-command.ts, what criterion files hold inspect-command.ts.
 */
import type { Command } from 'commander';
import { registerFitCommand } from './fit-command.js';
import { registerInspectCommand } from './inspect-command.js';
import { registerScoreCommand } from './score-command.js';

export function registerArmCommands(program: Command): void {
  registerFitCommand(program);
  registerScoreCommand(program);
  registerInspectCommand(program);
}
