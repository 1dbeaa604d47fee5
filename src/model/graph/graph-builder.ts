/**
 * A small imperative ONNX graph builder: add nodes, get back output names. It knows nothing about
 * transformers; src/model/graph/decoder-graph.ts uses it to emit the decoder.
 */
import { encodeModel, OnnxAttrType, OnnxDType } from './proto.js';

export type AttrValue = number | number[] | string | { floats: number[] } | { float: number };
export type Dim = number | string;
type ElemType = keyof typeof OnnxDType;

interface ValueInfo {
  name: string;
  elemType: ElemType;
  shape: Dim[];
  doc?: string;
}

/**
 * Where a weight's bytes live in the external data file; `elemType` defaults to FLOAT (FLOAT16: `--dtype fp16`
 * matrices; UINT8: packed block-quantised codes; INT8: row-wise int8 codes).
 */
export interface ExternalRef {
  name: string;
  dims: number[];
  offset: number;
  length: number;
  elemType?: 'FLOAT' | 'FLOAT16' | 'UINT8' | 'INT8';
}

/** onnxruntime's contrib operator domain (MatMulNBits and friends). */
const MS_DOMAIN = 'com.microsoft';

export class GraphBuilder {
  private readonly nodes: Record<string, unknown>[] = [];
  private readonly initializers: Record<string, unknown>[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private counter = 0;
  private readonly constCache = new Map<string, string>();
  private readonly externalNames = new Set<string>();
  private usesContribOps = false;

  constructor(private readonly opset = 18) {}

  input(name: string, elemType: ElemType, shape: Dim[], doc?: string): string {
    this.inputs.push({ name, elemType, shape, doc });
    return name;
  }

  output(name: string, elemType: ElemType, shape: Dim[], doc?: string): void {
    this.outputs.push({ name, elemType, shape, doc });
  }

  /** A weight stored in the external data file `location` (registered once, however often used). */
  externalWeight(ref: ExternalRef, location: string): string {
    if (this.externalNames.has(ref.name)) return ref.name;
    this.externalNames.add(ref.name);
    this.initializers.push({
      name: ref.name,
      dims: ref.dims,
      data_type: OnnxDType[ref.elemType ?? 'FLOAT'],
      data_location: 1,
      external_data: [
        { key: 'location', value: location },
        { key: 'offset', value: String(ref.offset) },
        { key: 'length', value: String(ref.length) },
      ],
    });
    return ref.name;
  }

  /** An in-graph float32 constant (small tensors only: rope frequencies, scalars). */
  floatConst(values: ArrayLike<number>, dims: number[], hint = 'c'): string {
    const data = Float32Array.from(values);
    const key = `f:${dims.join(',')}:${Array.from(data).join(',')}`;
    return this.cached(key, hint, (name) => ({
      name,
      dims,
      data_type: OnnxDType.FLOAT,
      raw_data: new Uint8Array(data.buffer),
    }));
  }

  /** An in-graph int64 constant (shapes, axes, indices). */
  intConst(values: number[], dims: number[] = [values.length], hint = 'i'): string {
    const key = `i:${dims.join(',')}:${values.join(',')}`;
    return this.cached(key, hint, (name) => ({
      name,
      dims,
      data_type: OnnxDType.INT64,
      raw_data: new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer),
    }));
  }

  /** An in-graph uint8 constant (quantisation zero points). */
  uint8Const(values: number[], dims: number[] = [values.length], hint = 'u8'): string {
    const key = `u8:${dims.join(',')}:${values.join(',')}`;
    return this.cached(key, hint, (name) => ({
      name,
      dims,
      data_type: OnnxDType.UINT8,
      raw_data: Uint8Array.from(values),
    }));
  }

  private cached(key: string, hint: string, make: (name: string) => Record<string, unknown>): string {
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = `const.${hint}.${this.counter++}`;
    this.initializers.push(make(name));
    this.constCache.set(key, name);
    return name;
  }

  /**
   * Adds a node. `out` names the (first) output, so sites in the graph carry readable names;
   * pass a number for several anonymous outputs.
   */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, out?: string | string[]): string {
    return this.opMulti(opType, inputs, attrs, out ?? 1)[0]!;
  }

  opMulti(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue>,
    out: string | string[] | number,
    domain?: string,
  ): string[] {
    const outputs =
      typeof out === 'number'
        ? Array.from({ length: out }, () => `${opType.toLowerCase()}.${this.counter++}`)
        : Array.isArray(out)
          ? out
          : [out];
    if (domain === MS_DOMAIN) this.usesContribOps = true;
    else if (domain) throw new Error(`internal: unsupported operator domain ${domain}`);
    this.nodes.push({
      op_type: opType,
      name: `${opType}.${this.counter++}`,
      input: inputs,
      output: outputs,
      attribute: Object.entries(attrs).map(([name, v]) => encodeAttr(name, v)),
      ...(domain ? { domain } : {}),
    });
    return outputs;
  }

  /** A node of onnxruntime's contrib domain (com.microsoft, opset 1), e.g. MatMulNBits. */
  contribOp(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, out?: string): string {
    return this.opMulti(opType, inputs, attrs, out ?? 1, MS_DOMAIN)[0]!;
  }

  toBytes(doc: string, metadata: Record<string, string>): Uint8Array {
    const info = (v: ValueInfo) => ({
      name: v.name,
      doc_string: v.doc,
      type: {
        tensor_type: {
          elem_type: OnnxDType[v.elemType],
          shape: { dim: v.shape.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) },
        },
      },
    });
    return encodeModel({
      ir_version: 8,
      producer_name: 'activation-rm',
      producer_version: '0.1.0',
      doc_string: doc,
      opset_import: [
        { domain: '', version: this.opset },
        ...(this.usesContribOps ? [{ domain: MS_DOMAIN, version: 1 }] : []),
      ],
      metadata_props: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: {
        name: 'decoder',
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs.map(info),
        output: this.outputs.map(info),
      },
    });
  }
}

function encodeAttr(name: string, v: AttrValue): Record<string, unknown> {
  if (typeof v === 'number') return { name, type: OnnxAttrType.INT, i: v };
  if (typeof v === 'string') return { name, type: OnnxAttrType.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: OnnxAttrType.INTS, ints: v };
  if ('float' in v) return { name, type: OnnxAttrType.FLOAT, f: v.float };
  return { name, type: OnnxAttrType.FLOATS, floats: v.floats };
}
