/** A small seeded PRNG (mulberry32) with Box–Muller normals; its state can be saved and restored. */
export class Rng {
  private s: number;
  private spare: number | null = null;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  uniform(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const u = Math.max(this.uniform(), 1e-12),
      v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** `k` distinct indices from [0, n) excluding `exclude`, in random order (partial Fisher–Yates). */
  sample(n: number, k: number, exclude: Set<number> = new Set()): number[] {
    const pool = Array.from({ length: n }, (_, i) => i).filter((i) => !exclude.has(i));
    if (k > pool.length) throw new Error(`cannot draw ${k} of ${pool.length}`);
    for (let i = 0; i < k; i++) {
      const j = i + this.int(pool.length - i);
      [pool[i], pool[j]] = [pool[j]!, pool[i]!];
    }
    return pool.slice(0, k);
  }

  shuffle<T>(xs: T[]): T[] {
    return this.sample(xs.length, xs.length).map((i) => xs[i]!);
  }

  get state(): { s: number; spare: number | null } {
    return { s: this.s, spare: this.spare };
  }
  static fromState(state: { s: number; spare: number | null }): Rng {
    const r = new Rng(0);
    r.s = state.s >>> 0;
    r.spare = state.spare;
    return r;
  }
}
