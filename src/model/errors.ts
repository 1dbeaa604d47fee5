/** An error in a model's files or in how the model was asked for; its message names the file. */
export class ModelError extends Error {
  override name = 'ModelError';
}
