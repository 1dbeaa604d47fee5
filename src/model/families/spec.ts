/**
 * Temporary re-exports for importers not yet moved to the split modules (types.ts, tables.ts, config.ts,
 * weights.ts); delete once nothing imports it.
 */
export { specFromConfig } from './config.js';
export { SUPPORTED_FAMILIES, IMAGE_TEXT_MODEL_TYPES } from './tables.js';
export { expectedTensors, languageModelSpelling, textWeightName } from './weights.js';
export type { Family, ImageTextSpec, LayerType, ModelSpec, RopeSpec } from './types.js';
