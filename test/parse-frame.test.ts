/** Frames parsed around their one long string give exactly what JSON.parse of the whole text gives. */
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { Base64Bytes } from "../src/protocol/base64.ts";
import { parseFramePayload } from "../src/protocol/parse-frame.ts";

const encoder = new TextEncoder();
const long = (n = 100_000) => randomBytes(Math.ceil((n * 3) / 4)).toString("base64").slice(0, n);

/** The reference: the whole payload decoded and parsed, or the error message that gives. */
function reference(payload: Uint8Array): { value: unknown } | { error: string } {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(payload);
  } catch {
    return { error: "frame is not valid UTF-8" };
  }
  try {
    return { value: JSON.parse(text) };
  } catch (error) {
    return { error: (error as Error).message };
  }
}

function outcome(payload: Uint8Array): { value: unknown } | { error: string } {
  try {
    return { value: parseFramePayload(payload) };
  } catch (error) {
    return { error: (error as Error).message };
  }
}

describe("parseFramePayload", () => {
  const data = long();
  const texts: [string, string][] = [
    ["an upload chunk", JSON.stringify({ jsonrpc: "2.0", id: 7, method: "upload_chunk", params: { upload_id: "u", offset: 0, content_base64: data } })],
    ["the long string at the top", JSON.stringify(data)],
    ["in an array, deep", JSON.stringify({ a: [1, { b: [null, data, "x"] }], c: "\"quoted\" \\ back" })],
    ["escaped quotes and backslashes before it", JSON.stringify({ s: 'a\\"b\\\\', t: "\\", u: data })],
    ["two long strings", JSON.stringify({ a: data, b: long(60_000), c: data.slice(0, 40_000) })],
    ["the longest string is a key", JSON.stringify({ [data]: 1, v: "short" })],
    ["a key, with spaces before its colon", `{"${data}"  \n :1}`],
    ["with escapes inside the long string", JSON.stringify({ v: `${data}\n\t"${data}` })],
    ["with non-ASCII inside the long string", JSON.stringify({ v: `${data}é€😀` })],
    ["whitespace around everything", ` \n{ "v" : "${data}" , "w" : [ ] } \n`],
    ["the placeholder's look-alike sent by a host", JSON.stringify({ v: data, w: "\u0000kma-long-string-1-2-3-4" })],
    ["a batch", JSON.stringify([{ id: 1, params: { v: data } }, { id: 2 }])],
    ["not JSON: unterminated", `{"v":"${data}"`],
    ["not JSON: trailing comma", `{"v":"${data}",}`],
    ["not JSON: two values", `{"v":"${data}"} {"w":1}`],
    ["not JSON: an odd number of quotes", `{"v":"${data}", "w":"x}`],
  ];
  for (const [name, text] of texts) {
    test(name, () => {
      const payload = encoder.encode(text);
      expect(outcome(payload)).toEqual(reference(payload));
    });
  }

  test("raw control characters in a long string are refused as JSON.parse refuses them, wherever they stand", () => {
    for (const control of ["\u0000", "\t", "\n", "\r", "\u001f"]) {
      for (const at of [0, 1, 2, 3, 4, 5, 50_000, data.length - 5, data.length - 4, data.length - 3, data.length - 2, data.length - 1, data.length]) {
        for (const prefix of ['{"v":"', '{"vv":"', '{"vvv":"', '{"vvvv":"']) {
          const payload = encoder.encode(`${prefix}${data.slice(0, at)}${control}${data.slice(at)}"}`);
          const result = outcome(payload);
          expect(result).toEqual(reference(payload));
          expect("error" in result).toBe(true);
        }
      }
    }
    // DEL (0x7f) and the other printable bytes around the control range stand raw in JSON.
    const payload = encoder.encode(`{"v":"${data}\u007f ~!"}`);
    expect(outcome(payload)).toEqual(reference(payload));
  });

  test("escapes and non-ASCII characters in a long string parse as JSON.parse parses them, wherever they stand", () => {
    for (const odd of ["\\n", "\\\\", '\\"', "\\u0041", "é", "€", "😀", "\u0080", "\u00ff"]) {
      for (const at of [0, 1, 2, 3, 4, 5, 50_000, data.length - 4, data.length - 3, data.length - 2, data.length - 1, data.length]) {
        for (const prefix of ['{"v":"', '{"vv":"', '{"vvv":"', '{"vvvv":"']) {
          const payload = encoder.encode(`${prefix}${data.slice(0, at)}${odd}${data.slice(at)}"}`);
          const result = outcome(payload);
          expect(result).toEqual(reference(payload));
          expect("value" in result).toBe(true);
        }
      }
    }
  });

  test("invalid UTF-8 beside a long string is refused as such", () => {
    const payload = Buffer.concat([encoder.encode(`{"v":"${data}","w":"`), Uint8Array.of(0xc3, 0x28), encoder.encode('"}')]);
    expect(outcome(payload)).toEqual({ error: "frame is not valid UTF-8" });
    // Inside the long string too: a stray continuation byte (0x80-0xBF) or a cut sequence, at every alignment.
    for (const bad of [[0x80], [0x9f], [0xbf], [0xc3, 0x28], [0xe2, 0x82]]) {
      for (const at of [0, 1, 2, 3, 50_000, data.length - 1, data.length]) {
        const text = encoder.encode(`{"v":"${data}"}`);
        const cut = 6 + at;
        const payload = Buffer.concat([text.subarray(0, cut), Uint8Array.from(bad), text.subarray(cut)]);
        expect(outcome(payload)).toEqual({ error: "frame is not valid UTF-8" });
      }
    }
  });

  test("a long string is the same string, not a copy of the caller's later bytes", () => {
    const payload = encoder.encode(JSON.stringify({ v: data }));
    const value = parseFramePayload(payload) as { v: string };
    payload.fill(0x41);
    expect(value.v).toBe(data);
  });

  test("random documents with long strings anywhere match JSON.parse", () => {
    let seed = 11;
    const random = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
    const leaf = (): unknown => [() => random(1000), () => "s\"\\" + random(9), () => null, () => long(33_000 + random(100)), () => true][random(5)]!();
    const node = (depth: number): unknown => {
      if (depth > 3 || random(3) === 0) return leaf();
      if (random(2) === 0) return Array.from({ length: random(4) }, () => node(depth + 1));
      return Object.fromEntries(Array.from({ length: random(4) }, (_, i) => [`k${i}`, node(depth + 1)]));
    };
    for (let i = 0; i < 60; i++) {
      const payload = encoder.encode(JSON.stringify(node(0)));
      expect(outcome(payload)).toEqual(reference(payload));
    }
  });
});

describe("parseFramePayload with decodeBase64Fields (the agent's requests)", () => {
  const bytes = randomBytes(1024 * 1024);
  const base64 = bytes.toString("base64");
  const parse = (value: unknown) => parseFramePayload(encoder.encode(JSON.stringify(value)), { decodeBase64Fields: true });

  test("in a batch, a request's content_base64 comes decoded too", () => {
    const batch = [{ jsonrpc: "2.0", id: 1, method: "ping" }, { jsonrpc: "2.0", id: 2, method: "copy_to_guest", params: { path: "/tmp/x", content_base64: base64 } }];
    const value = parse(batch) as [unknown, { params: { content_base64: unknown } }];
    expect(value[1].params.content_base64).toBeInstanceOf(Base64Bytes);
    expect(JSON.parse(JSON.stringify(value))).toEqual(batch);
  });

  test("an upload chunk's content_base64 comes decoded, and the rest as JSON.parse gives it", () => {
    const request = { jsonrpc: "2.0", id: 7, method: "upload_chunk", params: { upload_id: "u", offset: 0, content_base64: base64 } };
    const value = parse(request) as { params: { content_base64: unknown } };
    const decoded = value.params.content_base64 as Base64Bytes;
    expect(decoded).toBeInstanceOf(Base64Bytes);
    expect(Buffer.from(decoded.bytes).equals(bytes)).toBe(true);
    expect(JSON.parse(JSON.stringify(value))).toEqual(request);
    decoded.release();
  });

  test("a long *_base64 string that is not base64 stays the string JSON.parse gives, for the schema to refuse", () => {
    for (const content_base64 of [`${base64}A`, `${base64.slice(0, -4)}QQ*=`, `${base64.slice(0, 5000)}\n${base64.slice(5000)}`, `${base64.slice(0, 5000)}é${base64.slice(5001)}`]) {
      const text = JSON.stringify({ params: { content_base64 } });
      const payload = encoder.encode(text);
      expect(parseFramePayload(payload, { decodeBase64Fields: true })).toEqual(JSON.parse(text));
    }
  });

  test("a long base64 string anywhere else stays a string: other keys, deeper keys the host names (exec's env), arrays, the top", () => {
    const others = [
      { params: { args: [base64] } },
      { params: { content: base64 } },
      { params: { base64: base64 } },
      { params: { env: { PAYLOAD_base64: base64 } } },
      { content_base64: base64 },
      [{ params: { env: { X_base64: base64 } } }],
      base64,
      [base64],
    ];
    for (const value of others) {
      expect(parse(value)).toEqual(value);
    }
  });

  test("without the option (the client's replies), a *_base64 string stays a string", () => {
    const reply = { jsonrpc: "2.0", id: 1, result: { content_base64: base64 } };
    expect(parseFramePayload(encoder.encode(JSON.stringify(reply)))).toEqual(reply);
  });
});
