/**
 * What the decoder takes of an image (kept under vision/ so image inputs need not import the decoder). One image's
 * features placed in a prompt (image-text checkpoints): the row's ids `start … start + n − 1` are the image's
 * expanded placeholders, and their inputs_embeds rows become `embeds` instead of embedding-table rows.
 */
export interface ImageEmbeds {
  /** Index of the image's first placeholder among the row's ids (for `extend`: among the new ids). */
  start: number;
  /** [n, D] */
  embeds: Float32Array;
  /**
   * M-RoPE families: the image's token grid [t, h, w] after the spatial merge (t·h·w = n), which spreads its
   * positions.
   */
  grid?: readonly [number, number, number];
  /** Qwen3-VL: one [n, D] per DeepStack layer, added to these rows after that layer. */
  deepstack?: readonly Float32Array[];
}
