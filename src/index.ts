export { Decoder, argmax, emptyKv, type HeadPatch, type ForwardResult, type KvCache, type LoadOptions } from './model/decoder.js';
export { ModelError } from './model/errors.js';
export { specFromConfig, SUPPORTED_FAMILIES, type ModelSpec, type Family } from './model/spec.js';
export { Tokenizer, type ChatMessage } from './model/tokenizer.js';
export { resolveModelDir } from './model/hub.js';
