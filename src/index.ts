/** The library's public API: the engine, the Activation RM, datasets, the evaluation harness and the reward server. */
export {
  Decoder,
  argmax,
  emptyKv,
  type HeadPatch,
  type ForwardResult,
  type KvCache,
  type LoadOptions,
  type ImageEmbeds,
  type RowImages,
} from './model/decoder.js';
export { ImageInputs, type ImagePrompt } from './model/vision/image-inputs.js';
export { decodeImage, type RgbImage } from './model/vision/image.js';
export { ModelError } from './model/errors.js';
export { specFromConfig } from './model/families/config.js';
export { SUPPORTED_FAMILIES, IMAGE_TEXT_MODEL_TYPES } from './model/families/tables.js';
export type { ModelSpec, Family, ImageTextSpec } from './model/families/types.js';
export { Tokenizer, type ChatMessage } from './model/tokenizer.js';
export { resolveModelDir } from './model/checkpoint/hub.js';
export {
  fitActivationRM,
  FitInterrupted,
  FitError,
  judgeItems,
  type FitOptions,
  type HeadStrategy,
} from './arm/fit.js';
export { ActivationRM, type ExampleScore, type ItemScore, type PairScore, type ScoreOptions } from './arm/rm.js';
export { CriterionSet, passKey, type NamedCriterion } from './arm/criterion-set.js';
export { loadCriterion, saveCriterion, type Criterion, type CriterionMeta } from './arm/criterion.js';
export { DEFAULT_TEMPLATES, type TemplateKind, type JudgeItem } from './arm/template.js';
export { REINFORCE_DEFAULTS, type ReinforceOptions } from './arm/reinforce.js';
export {
  readExamples,
  toScalarItems,
  DataError,
  type Example,
  type PairExample,
  type ScalarExample,
  type Prompt,
} from './data/examples.js';
export { evaluate, runEval, type EvalOptions } from './eval/harness.js';
export { drawSplits } from './eval/splits.js';
export type { RunRecord } from './eval/records.js';
export { METHODS, type Method, type MethodOptions } from './eval/methods.js';
export { aggregate, type Results, type MethodResult } from './eval/aggregate.js';
export { accuracy, bootstrapInterval, meanStd, sectionScores } from './eval/metrics.js';
export { zeroShotRM } from './arm/fit.js';
export { createRewardServer, type RewardServer } from './server/app.js';
export { SERVER_DEFAULTS, type RewardServerOptions } from './server/options.js';
export { InProcessEngine, WorkerEngine } from './server/engine.js';
export type { ScoringEngine } from './server/engine-types.js';
export { JudgeImages, disposeDecoder, releaseJudgeImages, visionConfigHash, type ImageFileInfo } from './arm/images.js';
export { readMultimodalRewardBench, mmRewardBenchCategory } from './data/mm-rewardbench.js';
