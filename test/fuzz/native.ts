/**
 * Native-protocol fuzz cases: one payload per frame (frames stay well-formed
 * here; run.ts fuzzes the framing layer itself), each with the check its
 * replies must pass. Random, malformed, mutated and tricky-but-valid requests.
 */
import { expect } from "bun:test";
import { concatBytes, pingRequest } from "../helpers/agent-process.ts";
import type { Rng } from "./random.ts";

export type Reply = any;

export interface Case {
  kind: string;
  bytes: Uint8Array;
  /** Throws (via expect) when the replies this frame produced are wrong. */
  check(replies: Reply[]): void;
}

const KNOWN_CODES = new Set([-32700, -32600, -32601, -32602, -32004]);
const DEEP = 10_000;
const encoder = new TextEncoder();

/** Shape every reply must have, whatever was sent. */
export function checkNativeShape(reply: Reply): void {
  const items = Array.isArray(reply) ? reply : [reply];
  if (Array.isArray(reply)) expect(reply.length).toBeGreaterThan(0);
  for (const item of items) {
    expect(item.jsonrpc).toBe("2.0");
    expect("id" in item).toBe(true);
    expect(item.id === null || typeof item.id === "string" || typeof item.id === "number").toBe(true);
    expect("result" in item !== "error" in item).toBe(true);
    if ("error" in item) {
      expect(typeof item.error.message).toBe("string");
      if (!KNOWN_CODES.has(item.error.code)) throw new Error(`unexpected error code in ${JSON.stringify(item).slice(0, 500)}`);
    }
  }
}

/** Makes cases from `rng` for an agent with these limits ([limits] max_frame_bytes, max_batch_requests). */
export function nativeCases(rng: Rng, { maxFrame, maxBatch }: { maxFrame: number; maxBatch: number }): () => Case {
  const int = (n: number) => rng.int(n);
  const pick = <T>(items: readonly T[]): T => rng.pick(items);
  const chance = (p: number) => rng.chance(p);
  const randomBytes = (length: number) => rng.bytes(length);
  const randomString = (max?: number) => rng.string(max);
  const randomJson = () => rng.json();
  const MAX_FRAME = maxFrame;
  const MAX_BATCH = maxBatch;
  /** A JSON value that is not a string, number or null (an invalid id) / not an object (invalid params) ... */
  const nonObject = () => pick<unknown>([1, -2.5, "x", "", true, false, 0]);
  let nextId = 0;
  const uniqueId = () => (chance(0.5) ? `f${nextId++}` : 1_000_000 + nextId++);

  function expectErrorReply(replies: Reply[], code: number | number[], id: unknown = null): void {
    expect(replies).toHaveLength(1);
    const reply = replies[0];
    const codes = Array.isArray(code) ? code : [code];
    expect(codes).toContain(reply.error?.code);
    expect(reply.id).toEqual(id);
  }

  function expectAtMostOne(replies: Reply[]): void {
    expect(replies.length).toBeLessThanOrEqual(1);
  }

  function validRequest(): { request: Record<string, unknown>; check(replies: Reply[]): void } {
    const id = uniqueId();
    if (chance(0.2)) {
      return {
        request: { jsonrpc: "2.0", id, method: "get_info" },
        check: (replies) => {
          expect(replies).toHaveLength(1);
          expect(replies[0].id).toBe(id);
          expect(replies[0].result.methods.length).toBeGreaterThanOrEqual(2);
        },
      };
    }
    const payload = randomJson();
    const request: Record<string, unknown> = { jsonrpc: "2.0", id, method: "ping", params: { payload } };
    return {
      request,
      check: (replies) => expect(replies).toEqual([{ jsonrpc: "2.0", id, result: { pong: true, payload: JSON.parse(JSON.stringify(payload)) } }]),
    };
  }

  const deepArrays = "[".repeat(DEEP) + "]".repeat(DEEP);
  const deepObjects = '{"a":'.repeat(DEEP) + "0" + "}".repeat(DEEP);
  const deepMixed = '[{"a":'.repeat(DEEP / 2) + "0" + "}]".repeat(DEEP / 2);
  const deepUnclosed = "[".repeat(DEEP);

  const generators: [weight: number, make: () => Case][] = [
    [10, () => {
      const { request, check } = validRequest();
      return { kind: "valid", bytes: encoder.encode(JSON.stringify(request)), check };
    }],
    [12, () => ({ kind: "random-bytes", bytes: randomBytes(1 + int(300)), check: expectAtMostOne })],
    [10, () => {
      const text = JSON.stringify(validRequest().request);
      const bytes = encoder.encode(text);
      // Any proper prefix of a JSON object is invalid JSON (or an invalid UTF-8 tail).
      return { kind: "truncated", bytes: bytes.subarray(0, 1 + int(bytes.length - 1)), check: (replies) => expectErrorReply(replies, -32700) };
    }],
    [10, () => {
      const bytes = encoder.encode(JSON.stringify(validRequest().request));
      for (let n = 1 + int(4); n > 0; n--) bytes[int(bytes.length)] = int(256);
      return { kind: "corrupted", bytes, check: expectAtMostOne };
    }],
    [12, () => ({ kind: "random-json", bytes: encoder.encode(JSON.stringify(randomJson())), check: expectAtMostOne })],
    [3, () => {
      const variant = int(5);
      if (variant === 4) {
        const id = uniqueId();
        const text = `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping","params":{"payload":${chance(0.5) ? deepArrays : deepMixed}}}`;
        return {
          kind: "deep-payload",
          bytes: encoder.encode(text),
          check: (replies) => {
            expect(replies).toHaveLength(1);
            expect(replies[0].id).toEqual(id);
            expect(replies[0].result?.pong).toBe(true);
          },
        };
      }
      const text = [deepArrays, deepObjects, deepMixed, deepUnclosed][variant]!;
      return {
        kind: "deep",
        bytes: encoder.encode(text),
        check: (replies) => {
          expect(replies).toHaveLength(1);
          // A batch of one (nested array) element gets an array of one -32600.
          const reply = Array.isArray(replies[0]) ? replies[0][0] : replies[0];
          expect([-32700, -32600]).toContain(reply.error.code);
        },
      };
    }],
    [5, () => {
      const id = pick(["1e999", "-1e999", "123456789012345678901234567890", "1e-400", "-0", "1E+2", String(2 ** 53 + 1)]);
      const payload = pick(["1e999", "9".repeat(400), "-1e-999", "1.7976931348623157e308", "0.0000000000000000000001"]);
      const text = `{"jsonrpc":"2.0","id":${id},"method":"ping","params":{"payload":${payload}}}`;
      const parsedId = JSON.parse(id) as number;
      const parsedPayload = JSON.parse(payload) as number;
      return {
        kind: "huge-numbers",
        bytes: encoder.encode(text),
        check: (replies) => {
          if (!Number.isFinite(parsedId)) return expectErrorReply(replies, -32600);
          expect(replies).toHaveLength(1);
          expect(replies[0].id).toBe(parsedId === 0 ? 0 : parsedId);
          // As JSON.stringify writes it: -0 comes back as 0 and an infinite payload (no such JSON) as null.
          expect(replies[0].result.payload).toBe(JSON.parse(JSON.stringify(parsedPayload)));
        },
      };
    }],
    [15, () => {
      const id = uniqueId();
      const request: Record<string, unknown> = { jsonrpc: "2.0", id, method: "ping", params: { payload: 1 } };
      const field = pick(["jsonrpc", "id", "method", "params", "params-array", "params-key", "get_info-params", "method-name"]);
      let expected: [number, unknown];
      switch (field) {
        case "jsonrpc":
          request.jsonrpc = pick<unknown>([2, 2.0, "2", "1.0", "", null, true, [], {}, "2.0 "]);
          expected = [-32600, id];
          break;
        case "id":
          request.id = pick<unknown>([true, false, [], [1], {}, { id: 1 }]);
          expected = [-32600, null];
          break;
        case "method":
          request.method = pick<unknown>([1, null, true, [], ["ping"], { ping: 1 }]);
          expected = [-32600, id];
          break;
        case "params":
          request.params = pick<unknown>([null, 1, "payload", true, false]);
          expected = [-32600, id];
          break;
        case "params-array":
          request.params = [randomJson()];
          expected = [-32602, id];
          break;
        case "params-key":
          request.params = { payload: 1, [`x${randomString(5)}`]: randomJson() };
          expected = [-32602, id];
          break;
        case "get_info-params":
          request.method = "get_info";
          request.params = { [`k${randomString(5)}`]: randomJson() };
          expected = [-32602, id];
          break;
        default:
          request.method = pick(["Ping", "ping ", "get-info", "exec_now", "__proto__", "hasOwnProperty", randomString(8) + "!"]);
          expected = [-32601, id];
      }
      const [code, replyId] = expected;
      return { kind: `wrong-${field}`, bytes: encoder.encode(JSON.stringify(request)), check: (replies) => expectErrorReply(replies, code, replyId) };
    }],
    [8, () => {
      if (chance(0.05)) {
        const items = Array.from({ length: MAX_BATCH + 1 + int(10) }, (_, i) => pingRequest(i));
        return { kind: "batch-too-big", bytes: encoder.encode(JSON.stringify(items)), check: (replies) => expectErrorReply(replies, -32004) };
      }
      const items: unknown[] = [];
      const validIds: unknown[] = [];
      let answered = 0;
      for (let n = 1 + int(20); n > 0; n--) {
        const what = int(4);
        if (what === 0) {
          const { request } = validRequest();
          validIds.push(request.id);
          items.push(request);
          answered++;
        } else if (what === 1) {
          items.push({ jsonrpc: "2.0", method: pick(["ping", "get_info", "nope"]) }); // notification
        } else {
          // Not a valid request object (no "jsonrpc" key can come out of randomJson): always answered with -32600.
          items.push(what === 2 ? nonObject() : randomJson());
          answered++;
        }
      }
      return {
        kind: "batch",
        bytes: encoder.encode(JSON.stringify(items)),
        check: (replies) => {
          if (answered === 0) return expect(replies).toEqual([]);
          expect(replies).toHaveLength(1);
          expect(Array.isArray(replies[0])).toBe(true);
          expect(replies[0]).toHaveLength(answered);
          const ids = replies[0].map((r: Reply) => r.id);
          for (const id of validIds) expect(ids).toContain(id);
          for (const r of replies[0]) if (!validIds.includes(r.id)) expect(r.error.code).toBe(-32600);
        },
      };
    }],
    [1, () => {
      const length = MAX_FRAME + 1 + int(4 * 1024);
      const bytes = chance(0.5) ? randomBytes(length) : encoder.encode(JSON.stringify(pingRequest("big", "b".repeat(length - 100))).padEnd(length, " "));
      return {
        kind: "oversized",
        bytes,
        check: (replies) => {
          expectErrorReply(replies, -32004);
          expect(replies[0].error.data).toEqual({ limit: MAX_FRAME, length: bytes.length });
        },
      };
    }],
    [3, () => ({ kind: "zero-length", bytes: new Uint8Array(0), check: (replies) => expectErrorReply(replies, -32700) })],
    [8, () => {
      const text = encoder.encode(JSON.stringify(validRequest().request));
      const bad = pick([[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82], [0x80], [0xf4, 0x90, 0x80, 0x80]]);
      const at = int(text.length + 1);
      const bytes = concatBytes([text.subarray(0, at), new Uint8Array(bad), text.subarray(at)]);
      return { kind: "invalid-utf8", bytes, check: (replies) => expectErrorReply(replies, -32700) };
    }],
    [3, () => {
      const id = uniqueId();
      const variants: [string, (replies: Reply[]) => void][] = [
        [`{"jsonrpc":"2.0","id":"dup","id":${JSON.stringify(id)},"method":"ping"}`, (r) => expect(r).toEqual([{ jsonrpc: "2.0", id, result: { pong: true } }])],
        [`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping","params":{"payload":{"__proto__":{"polluted":1}}}}`, (r) =>
          expect(r).toEqual([{ jsonrpc: "2.0", id, result: { pong: true, payload: JSON.parse('{"__proto__":{"polluted":1}}') } }])],
        [`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping","params":{"__proto__":{"payload":1}}}`, (r) => expectErrorReply(r, -32602, id)],
        [`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"constructor"}`, (r) => expectErrorReply(r, -32601, id)],
        [` \t\r\n{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping"}\n\n`, (r) => expect(r).toEqual([{ jsonrpc: "2.0", id, result: { pong: true } }])],
        [`\ufeff{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping"}`, (r) => expectErrorReply(r, -32700)],
        [`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping","params":{"payload":"${"\\ud800".repeat(3)}"}}`, (r) =>
          expect(r).toEqual([{ jsonrpc: "2.0", id, result: { pong: true, payload: "\ud800\ud800\ud800" } }])],
        [`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":"ping","params":{"payload":"${"é".repeat(20_000)}"}}`, (r) =>
          expect(r[0]?.result?.payload).toBe("é".repeat(20_000))],
      ];
      const [text, check] = pick(variants);
      return { kind: "tricky", bytes: encoder.encode(text), check };
    }],
  ];

  generators.push([10, () => {
    // Mutation: a valid request with a few bytes flipped, inserted, deleted or repeated.
    const bytes = rng.mutate(encoder.encode(JSON.stringify(validRequest().request)));
    return { kind: "mutated", bytes, check: expectAtMostOne };
  }]);

  const totalWeight = generators.reduce((sum, [weight]) => sum + weight, 0);

  function makeCase(): Case {
    let roll = int(totalWeight);
    for (const [weight, make] of generators) {
      if (roll < weight) return make();
      roll -= weight;
    }
    throw new Error("unreachable");
  }

  return makeCase;
}
