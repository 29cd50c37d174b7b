/** Base64 written into frames, and replies carrying Base64Bytes laid out as JSON.stringify would write them. */
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { z } from "zod";
import { Base64Bytes, base64DecodedLength, base64Length, decodeBase64Into, encodeBase64Into, isBase64 } from "../src/protocol/base64.ts";
import { HEADER_BYTES } from "../src/protocol/framing.ts";
import type { Response } from "../src/protocol/jsonrpc.ts";
import { ResponseFrames } from "../src/protocol/response-frames.ts";

const utf8 = new TextDecoder();

function payloadOf(frame: Uint8Array): string {
  expect(new DataView(frame.buffer, frame.byteOffset).getUint32(0)).toBe(frame.length - HEADER_BYTES);
  return utf8.decode(frame.subarray(HEADER_BYTES));
}

describe("encodeBase64Into", () => {
  test("matches Buffer's base64 for every length from 0 to 100, across slice boundaries, and for a 2 MiB chunk", () => {
    const lengths = [...Array.from({ length: 101 }, (_, i) => i), 12 * 1024 - 1, 12 * 1024, 12 * 1024 + 1, 24 * 1024 + 2, 2 * 1024 * 1024 + 1];
    for (const length of lengths) {
      const source = randomBytes(length);
      const target = Buffer.alloc(base64Length(length) + 8);
      const written = encodeBase64Into(source.subarray(0), target, 3);
      expect(written).toBe(base64Length(length));
      expect(target.subarray(3, 3 + written).toString("latin1")).toBe(source.toString("base64"));
    }
  });

  test("encodes a view at its own offset, not its buffer's start", () => {
    const whole = randomBytes(100);
    const target = Buffer.alloc(64);
    const written = encodeBase64Into(new Uint8Array(whole.buffer, whole.byteOffset + 7, 20), target, 0);
    expect(target.subarray(0, written).toString("latin1")).toBe(whole.subarray(7, 27).toString("base64"));
  });

  test("refuses a target too small", () => {
    expect(() => encodeBase64Into(new Uint8Array(7), Buffer.alloc(11), 0)).toThrow(RangeError);
  });
});

describe("isBase64 and decodeBase64Into", () => {
  test("accept and refuse exactly what z.base64() does, with faults on both sides of every slice boundary", () => {
    const zodBase64 = z.base64();
    let seed = 7;
    const random = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
    const faults = [" ", "\n", "=", "==", "-", "_", "A", "é", "\u0000"];
    const cases: string[] = ["", "QQ==", "QUJD", "QQ=", "QQ", "QQ==QQ==", "QR==", "====", "QUJD\n", "Q===", "QQ=A"];
    // Up to 4 MiB decoded, long texts are checked whole; above, in slices of 16 Ki characters.
    for (const bytes of [12 * 1024 - 3, 12 * 1024, 12 * 1024 + 1, 24 * 1024 + 2, 40_000, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 4 * 1024 * 1024 + 40_000]) {
      const valid = randomBytes(bytes).toString("base64");
      cases.push(valid);
      for (const boundary of [16 * 1024, 32 * 1024, valid.length - 16 * 1024, valid.length]) {
        for (const delta of [-5, -4, -1, 0, 1, 4]) {
          const at = Math.max(0, Math.min(valid.length, boundary + delta));
          const fault = faults[random(faults.length)]!;
          cases.push(valid.slice(0, at) + fault + valid.slice(at), valid.slice(0, at) + fault + valid.slice(at + fault.length));
        }
      }
    }
    for (const text of cases) expect([text.length, isBase64(text)]).toEqual([text.length, zodBase64.safeParse(text).success]);
  });

  test("decodes into the target and refuses a target too small", () => {
    for (const length of [0, 1, 2, 3, 100, 12 * 1024 + 1]) {
      const bytes = randomBytes(length);
      const text = bytes.toString("base64");
      expect(base64DecodedLength(text)).toBe(length);
      const target = new Uint8Array(length + 10);
      expect(Buffer.from(decodeBase64Into(text, target)).equals(bytes)).toBe(true);
    }
    expect(() => decodeBase64Into("QUJD", new Uint8Array(2))).toThrow(RangeError);
  });

  test("decodes what isBase64 just checked, also when another text was checked in between or the task has ended", async () => {
    const [a, b] = [randomBytes(2 * 1024 * 1024 + 1), randomBytes(100_000)];
    const [textA, textB] = [a.toString("base64"), b.toString("base64")];
    const decoded = (text: string) => Buffer.from(decodeBase64Into(text, new Uint8Array(3 * 1024 * 1024)));
    expect(isBase64(textA)).toBe(true);
    expect(decoded(textA).equals(a)).toBe(true);
    expect(decoded(textA).equals(a)).toBe(true);
    expect(isBase64(textA)).toBe(true);
    expect(isBase64(textB)).toBe(true);
    expect(decoded(textA).equals(a)).toBe(true);
    expect(decoded(textB).equals(b)).toBe(true);
    expect(isBase64(textB)).toBe(true);
    expect(isBase64(textA.slice(0, -4) + "QQ=A")).toBe(false);
    expect(decoded(textB).equals(b)).toBe(true);
    expect(isBase64(textA)).toBe(true);
    await Promise.resolve();
    expect(decoded(textA).equals(a)).toBe(true);
  });
});

describe("Base64Bytes", () => {
  test("JSON gives the base64 string; release runs once; reading after release throws", () => {
    let released = 0;
    const bytes = new Base64Bytes(Buffer.from("hello"), () => released++);
    expect(JSON.stringify({ content_base64: bytes })).toBe('{"content_base64":"aGVsbG8="}');
    bytes.release();
    bytes.release();
    expect(released).toBe(1);
    expect(() => JSON.stringify(bytes)).toThrow("read after release");
  });
});

describe("ResponseFrames", () => {
  const chunkResponse = (id: Response["id"], bytes: Uint8Array, extra: Record<string, unknown> = {}, onRelease?: () => void): Response => ({
    jsonrpc: "2.0",
    id,
    result: { path: "/tmp/ünïcode \"quoted\"", content_base64: new Base64Bytes(bytes, onRelease), skipped: undefined, bytes: bytes.length, ...extra },
  });

  test("a reply with Base64Bytes is byte for byte JSON.stringify's text, and the bytes are released once written", () => {
    const frames = new ResponseFrames();
    for (const [id, length] of [[1, 0], ["x", 1000], [null, 12 * 1024 + 2]] as const) {
      const data = randomBytes(length);
      const expected = JSON.stringify(chunkResponse(id, data, { eof: true, nested: { a: [1, "b"] }, fn: () => 1 }));
      let released = 0;
      const frame = frames.encode(chunkResponse(id, data, { eof: true, nested: { a: [1, "b"] }, fn: () => 1 }, () => released++));
      expect(payloadOf(frame)).toBe(expected);
      expect(released).toBe(1);
    }
  });

  test("other replies and batches are JSON.stringify's text in a buffer of their own", () => {
    const frames = new ResponseFrames();
    const ping: Response = { jsonrpc: "2.0", id: 1, result: { pong: true } };
    const frame = frames.encode(ping);
    expect(payloadOf(frame)).toBe(JSON.stringify(ping));
    expect(frames.isKept(frame)).toBe(false);
    const batch = frames.encode([ping, chunkResponse(2, Buffer.from("ab"))]);
    expect(JSON.parse(payloadOf(batch))[1].result.content_base64).toBe("YWI=");
  });

  test("a chunk frame is kept and reused; one above the kept size gets its own buffer", () => {
    const frames = new ResponseFrames();
    const first = frames.encode(chunkResponse(1, randomBytes(1000)));
    const second = frames.encode(chunkResponse(2, randomBytes(1000)));
    expect(frames.isKept(first)).toBe(true);
    expect(second.buffer).toBe(first.buffer);
    const big = randomBytes(3 * 1024 * 1024 + 10);
    const large = frames.encode(chunkResponse(3, big));
    expect(frames.isKept(large)).toBe(false);
    expect(Buffer.from(JSON.parse(payloadOf(large)).result.content_base64, "base64").equals(big)).toBe(true);
  });
});
