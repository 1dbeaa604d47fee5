// The engine alone: one forward pass with per-head outputs, then the same pass with one head patched.
// Run from the root of a project that installed activation-rm (docs/library.md says how; Node 20.19+).
import { Decoder } from 'activation-rm';

const decoder = await Decoder.load('node_modules/activation-rm/models/icl-tiny', { quiet: true });
const ids = decoder.tokenizer.encode('w3 w9 w20 w5 w11 w2 A:');
const { logits, heads } = await decoder.forward([ids]); // logits [B, V] at the last token, heads [B, L, H, d]
const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
const top = logits.indexOf(Math.max(...logits));
console.log(`${L} layers × ${H} heads of ${d}; next token ${JSON.stringify(decoder.tokenizer.decode([top]))}`);

const mask = new Float32Array(L * H); // [B, L, H]: 1 = patch that head at the last token
mask[(L - 1) * H + 0] = 1; // the last layer's head 0 ...
const values = new Float32Array(L * H * d); // [L, H, d]: ... replaced by zeros
const patched = await decoder.forward([ids], { mask, values, mode: 'replace' });
console.log(`logit of that token: ${logits[top].toFixed(3)} → ${patched.logits[top].toFixed(3)} patched`);
await decoder.dispose();
