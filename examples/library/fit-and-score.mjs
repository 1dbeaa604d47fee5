// Fit a criterion from 16 labelled pairs on the bundled icl-tiny model, save it, load it and score 40 new pairs.
// Run from the root of a project that installed activation-rm (docs/library.md says how; Node 20.19+).
import { ActivationRM, Decoder, fitActivationRM, readExamples } from 'activation-rm';

const pkg = 'node_modules/activation-rm';
const decoder = await Decoder.load(`${pkg}/models/icl-tiny`, { quiet: true });
const few = readExamples(`${pkg}/examples/library/few.jsonl`).examples;
// icl-tiny knows only the words w0…w47: the judge prompt is the bare item, no English question around it.
const options = { templateText: '{prompt} {response}', seed: 0, reinforce: { steps: 200 } }; // steps: 600 by default
const rm = await fitActivationRM(decoder, few, options);
rm.save('first-low.arm.safetensors');

const loaded = ActivationRM.load(decoder, 'first-low.arm.safetensors');
const test = readExamples(`${pkg}/examples/library/test.jsonl`).examples;
const scores = await loaded.scoreExamples(test); // per pair: { chosen, rejected, margin, correct, ... }
const { id, chosen, rejected, correct } = scores[0];
console.log(`accuracy ${scores.filter((s) => s.correct).length}/${scores.length}`);
console.log(id, { chosen, rejected, correct });
await decoder.dispose();
