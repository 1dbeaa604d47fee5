/**
 * The nodes of a serialised ONNX model, read straight from the protobuf wire format (ModelProto.graph = field 7,
 * GraphProto.node = 1; NodeProto input = 1, output = 2, op_type = 4, attribute = 5; AttributeProto name = 1,
 * i = 3), independently of the project's encoder: what onnxruntime will see.
 */
export interface GraphNode {
  op: string;
  inputs: string[];
  outputs: string[];
  attr: Record<string, number>;
}

export function graphNodes(buf: Uint8Array): GraphNode[] {
  const text = (from: number, to: number) => Buffer.from(buf.buffer, buf.byteOffset + from, to - from).toString('utf8');
  const fields = (from: number, to: number) => {
    const out: { field: number; value: number | [number, number] }[] = [];
    const varint = () => {
      let v = 0,
        mul = 1,
        b;
      do {
        b = buf[from++]!;
        v += (b & 0x7f) * mul;
        mul *= 128;
      } while (b & 0x80);
      return v;
    };
    while (from < to) {
      const tag = varint();
      const wire = tag & 7;
      if (wire === 0) out.push({ field: tag >>> 3, value: varint() });
      else if (wire === 2) {
        const n = varint();
        out.push({ field: tag >>> 3, value: [from, from + n] });
        from += n;
      } else if (wire === 5) from += 4;
      else if (wire === 1) from += 8;
      else throw new Error(`wire type ${wire}`);
    }
    return out;
  };
  const str = (v: number | [number, number]) => text(...(v as [number, number]));
  const sub = (v: number | [number, number]) => fields(...(v as [number, number]));
  const graph = fields(0, buf.length).find((f) => f.field === 7)!.value;
  return sub(graph)
    .filter((f) => f.field === 1)
    .map((f) => sub(f.value))
    .map((n) => {
      const attr = Object.fromEntries(
        n
          .filter((f) => f.field === 5)
          .map((f) => {
            const a = sub(f.value);
            return [str(a.find((x) => x.field === 1)!.value), a.find((x) => x.field === 3)?.value as number];
          }),
      );
      const inputs = n.filter((f) => f.field === 1).map((f) => str(f.value));
      const outputs = n.filter((f) => f.field === 2).map((f) => str(f.value));
      return { op: str(n.find((f) => f.field === 4)!.value), inputs, outputs, attr };
    });
}
