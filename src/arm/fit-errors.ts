/**
 * The errors a fit throws on purpose: FitError for a condition of its inputs (examples, options, a checkpoint, the
 * model's numbers) that the caller should report, FitInterrupted for a stop asked for through `shouldStop`.
 */

/** The fit stopped on request; its message says whether (and where) the progress was saved. */
export class FitInterrupted extends Error {
  override name = 'FitInterrupted';
}

export class FitError extends Error {
  override name = 'FitError';
}
