import { concatBytes } from "../helpers/agent-process.ts";

/** Seeded randomness for the fuzzers: the same seed gives the same cases, so a finding reproduces. */
export class Rng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** mulberry32: [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  bytes(length: number, max = 256): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.int(max);
    return out;
  }

  string(max = 12): string {
    const alphabets = ["abcdefghijklmnopqrstuvwxyz", "ABC xyz 0123456789", "\"\\/\b\f\n\r\t", "éü✓🐧\u0000\u001f\u2028\ud800\udfff"];
    let out = "";
    for (let i = this.int(max + 1); i > 0; i--) out += this.pick([...this.pick(alphabets)]);
    return out;
  }

  number(): number {
    return this.pick([0, -0, 1, -1, 0.5, 1e-300, -1e300, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 2 ** 64, this.int(1_000_000), this.next() * 1e6 - 5e5]);
  }

  json(depth = 0): unknown {
    switch (this.int(depth > 3 ? 4 : 6)) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.number();
      case 3:
        return this.string();
      case 4:
        return Array.from({ length: this.int(5) }, () => this.json(depth + 1));
      default: {
        const out: Record<string, unknown> = {};
        for (let i = this.int(5); i > 0; i--) out[this.string(6)] = this.json(depth + 1);
        return out;
      }
    }
  }

  /**
   * A valid message with a few random edits: bytes flipped, inserted, deleted,
   * or a slice repeated — the mutation half of the fuzzers.
   */
  mutate(valid: Uint8Array): Uint8Array {
    let bytes: Uint8Array = valid.slice();
    for (let edits = 1 + this.int(4); edits > 0; edits--) {
      const at = this.int(bytes.length + 1);
      switch (this.int(4)) {
        case 0:
          if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)]! ^= 1 << this.int(8);
          break;
        case 1:
          bytes = concatBytes([bytes.subarray(0, at), this.bytes(1 + this.int(8)), bytes.subarray(at)]);
          break;
        case 2:
          bytes = concatBytes([bytes.subarray(0, at), bytes.subarray(Math.min(bytes.length, at + 1 + this.int(8)))]);
          break;
        default: {
          const from = this.int(bytes.length + 1);
          bytes = concatBytes([bytes.subarray(0, at), bytes.subarray(from, from + this.int(16)), bytes.subarray(at)]);
        }
      }
    }
    return bytes;
  }
}
