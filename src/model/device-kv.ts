/**
 * A KV cache that stays on the GPU (WebGPU): each layer's keys and values as onnxruntime device tensors
 * (location 'gpu-buffer'), fed back as the next run's past without a copy through host memory. They are never
 * read back (onnxruntime-node cannot download them); each is released by dispose(), by its decoder's dispose(),
 * or when the garbage collector takes it.
 */
import type * as ort from 'onnxruntime-node';
import { ModelError } from './errors.js';

export class DeviceKv {
  private disposed = false;

  constructor(
    /** Per layer [1, KV, P, d], after RoPE. */
    private readonly keyTensors: ort.Tensor[],
    private readonly valueTensors: ort.Tensor[],
    /** The decoder whose session made them: another session cannot read them. */
    readonly owner: object,
  ) {}

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Layer l's keys and values, to feed as past.{l}.*; a ModelError once disposed or for another decoder. */
  layer(l: number, reader: object): { key: ort.Tensor; value: ort.Tensor } {
    if (this.disposed) throw new ModelError('this KV cache was disposed (disposeKv, or its decoder was disposed)');
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
    if (this.disposed) return;
    this.disposed = true;
    for (const t of [...this.keyTensors, ...this.valueTensors]) t.dispose();
  }
}

/** The device caches a decoder made and that may still be alive (weakly held: an unused one is left to the GC). */
export class DeviceKvRegistry {
  private readonly live = new Set<WeakRef<DeviceKv>>();

  add(kv: DeviceKv): void {
    for (const ref of this.live) if (ref.deref()?.isDisposed !== false) this.live.delete(ref);
    this.live.add(new WeakRef(kv));
  }

  /** Before the session is released: a device tensor must not outlive the provider that allocated it. */
  disposeAll(): void {
    for (const ref of this.live) ref.deref()?.dispose();
    this.live.clear();
  }
}
