/**
 * A KV cache that stays on the GPU (WebGPU): each layer's keys and values as onnxruntime device tensors
 * (location 'gpu-buffer'), fed back as the next run's past without a copy through host memory. They are never
 * read back (onnxruntime-node cannot download them).
 *
 * Lifetime: releasing a device tensor after its session was released crashes onnxruntime-node 1.30 (a segfault,
 * seen here), so no device tensor may be left for the garbage collector to release on its own. The decoder's
 * DeviceKvs registry holds every cache's tensors; a cache is released by dispose() (disposeKv), by the registry
 * once the DeviceKv object itself is garbage (a FinalizationRegistry, while the session lives), or by the
 * decoder's dispose() before it releases the session.
 */
import type * as ort from 'onnxruntime-node';
import { ModelError } from './errors.js';

export class DeviceKv {
  constructor(
    /** Per layer [1, KV, P, d], after RoPE. */
    private readonly keyTensors: ort.Tensor[],
    private readonly valueTensors: ort.Tensor[],
    /** The decoder whose session made them: another session cannot read them. */
    readonly owner: object,
    private readonly release: () => void,
    private readonly released: () => boolean,
  ) {}

  /** Layer l's keys and values, to feed as past.{l}.*; a ModelError once disposed or for another decoder. */
  layer(l: number, reader: object): { key: ort.Tensor; value: ort.Tensor } {
    if (this.released()) throw new ModelError('this KV cache was disposed (disposeKv, or its decoder was disposed)');
    if (reader !== this.owner)
      throw new ModelError('this KV cache lives on the GPU of another decoder; run it with the decoder that made it');
    return { key: this.keyTensors[l]!, value: this.valueTensors[l]! };
  }

  /** Whether `tensor` is one of this cache's. */
  has(tensor: ort.Tensor): boolean {
    return this.keyTensors.includes(tensor) || this.valueTensors.includes(tensor);
  }

  /** Frees the device memory now (idempotent). */
  dispose(): void {
    this.release();
  }
}

/** A decoder's device caches: their tensors, held until each cache is disposed or garbage, or the decoder goes. */
export class DeviceKvs {
  private readonly live = new Map<number, ort.Tensor[]>();
  private readonly garbage = new FinalizationRegistry<number>((id) => this.release(id));
  private nextId = 0;

  /** A cache over these tensors (keys and values per layer), tracked until released. */
  track(keys: ort.Tensor[], values: ort.Tensor[], owner: object): DeviceKv {
    const id = this.nextId++;
    this.live.set(id, [...keys, ...values]);
    const kv = new DeviceKv(
      keys,
      values,
      owner,
      () => this.release(id),
      () => !this.live.has(id),
    );
    this.garbage.register(kv, id);
    return kv;
  }

  /** Before the session is released: no device tensor may outlive the provider that allocated it. */
  disposeAll(): void {
    for (const id of [...this.live.keys()]) this.release(id);
  }

  private release(id: number): void {
    const tensors = this.live.get(id);
    if (!tensors) return;
    this.live.delete(id);
    for (const t of tensors) t.dispose();
  }
}
