/** Base64 decoded straight from a frame's bytes accepts exactly what the schema's check accepts, and decodes the same. */
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { base64Buffer, base64DecodedLength, Base64Bytes, decodeBase64Bytes, isBase64, takeBase64Bytes } from "../src/protocol/base64.ts";
import { BufferPool } from "../src/runtime/buffer-pool.ts";

const ascii = (text: string) => Buffer.from(text, "latin1");

/** decodeBase64Bytes' answer for `text`: the bytes, or null when it refused. */
function decoded(text: string): Buffer | null {
  const target = Buffer.alloc(Math.ceil(text.length / 4) * 3 + 8);
  const written = decodeBase64Bytes(ascii(text), target);
  return written < 0 ? null : target.subarray(0, written);
}

/** The reference: isBase64's verdict, and Node's decode of what it accepts. */
function expected(text: string): Buffer | null {
  return isBase64(text) ? Buffer.from(text, "base64") : null;
}

describe("decodeBase64Bytes", () => {
  test("every length from 0 to 100 bytes, so every path (four groups at a time, single groups, the padded last group)", () => {
    for (let n = 0; n <= 100; n++) {
      const bytes = randomBytes(n);
      expect(decoded(bytes.toString("base64"))).toEqual(bytes);
    }
  });

  test("a 2 MiB chunk, as the client sends it", () => {
    const bytes = randomBytes(2 * 1024 * 1024);
    expect(decoded(bytes.toString("base64"))!.equals(bytes)).toBe(true);
  });

  test("a character that is not base64 is refused wherever it stands, as isBase64 refuses it", () => {
    const text = randomBytes(75).toString("base64"); // 100 characters: 6 blocks of four groups, then one group
    for (const bad of [" ", "\n", "\\", '"', "-", "_", "=", ".", "\u0000", "\u007f", "\u00e9"]) {
      for (let at = 0; at < text.length; at++) {
        const mutated = text.slice(0, at) + bad + text.slice(at + 1);
        expect(decoded(mutated)).toEqual(expected(mutated));
        // Only "=" as the very last character is padding.
        if (!(bad === "=" && at === text.length - 1)) expect(decoded(mutated)).toBeNull();
      }
    }
  });

  test("padding: one or two '=' at the end only; any bits in the padded group, as isBase64 takes them", () => {
    for (const text of ["QQ==", "QUI=", "QR==", "QUJ=", "QUJD", "Q===", "====", "QQ=A", "Q=QA", "QUJDQQ==", "QQ==QUJD", "QUJD=", "QUJDQ", "QUJDQQ"]) {
      expect({ text, value: decoded(text) }).toEqual({ text, value: expected(text) });
    }
  });

  test("random texts near base64 agree with isBase64 and Node's decode", () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for (let i = 0; i < 3000; i++) {
      const text = randomBytes(1 + (i % 40)).toString("base64").split("");
      const edits = i % 3;
      for (let e = 0; e < edits; e++) text[Math.floor(Math.random() * text.length)] = alphabet[Math.floor(Math.random() * alphabet.length)]!;
      const joined = text.join("");
      expect({ joined, value: decoded(joined) }).toEqual({ joined, value: expected(joined) });
    }
  });

  test("a target too small for the text is an error, not a partial write", () => {
    expect(() => decodeBase64Bytes(ascii("QUJDRA=="), new Uint8Array(3))).toThrow(RangeError);
  });
});

describe("Base64Bytes.decode", () => {
  test("holds the bytes, writes itself as its base64 text, and refuses a text that is not base64", () => {
    const bytes = randomBytes(100_000);
    const value = Base64Bytes.decode(ascii(bytes.toString("base64")))!;
    expect(Buffer.from(value.bytes).equals(bytes)).toBe(true);
    expect(base64DecodedLength(value)).toBe(bytes.length);
    expect(JSON.stringify({ v: value })).toBe(JSON.stringify({ v: bytes.toString("base64") }));
    expect(Base64Bytes.decode(ascii("QUJD*A=="))).toBeNull();
    expect(Base64Bytes.decode(ascii("QUJDR"))).toBeNull();
  });

  test("after release its bytes are not read again: the buffer goes to the next frame", () => {
    const first = Base64Bytes.decode(ascii(randomBytes(3000).toString("base64")))!;
    first.release();
    expect(() => first.toJSON()).toThrow("after release");
    const next = Base64Bytes.decode(ascii(Buffer.alloc(3000, 7).toString("base64")))!;
    expect(next.bytes.buffer).toBe(first.bytes.buffer);
    expect(next.bytes.every((byte) => byte === 7)).toBe(true);
    next.release();
  });

  test("base64Buffer copies the bytes out and releases them; a string is decoded", () => {
    const bytes = randomBytes(5000);
    const value = Base64Bytes.decode(ascii(bytes.toString("base64")))!;
    const copy = base64Buffer(value);
    expect(copy.equals(bytes)).toBe(true);
    expect(() => value.toJSON()).toThrow("after release");
    expect(base64Buffer(bytes.toString("base64")).equals(bytes)).toBe(true);
  });

  test("takeBase64Bytes hands over the own bytes of a Base64Bytes, and decodes a string into the pool's buffer", () => {
    const pool = new BufferPool(1);
    const bytes = randomBytes(5000);
    const value = Base64Bytes.decode(ascii(bytes.toString("base64")))!;
    const taken = takeBase64Bytes(value, pool);
    expect(taken.bytes).toBe(value.bytes);
    taken.release();
    expect(() => value.toJSON()).toThrow("after release");

    const fromText = takeBase64Bytes(bytes.toString("base64"), pool);
    expect(Buffer.from(fromText.bytes).equals(bytes)).toBe(true);
    fromText.release();
    expect(pool.take(1).buffer).toBe(fromText.bytes.buffer);
  });
});
