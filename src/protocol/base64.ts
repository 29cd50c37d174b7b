/**
 * Base64 (RFC 4648, with padding) for file chunks, without multi-MB copies:
 * encoded into a reply's frame, checked and decoded into kept buffers, and
 * Base64Bytes, the member that carries bytes instead of their base64 text:
 * in a result until its frame is built, in a request from its frame on.
 */
import { BufferPool } from "../runtime/buffer-pool.ts";

/** A multiple of 3, so that no slice but the last has padding. */
const SLICE_BYTES = 48 * 1024;

const asciiEncoder = new TextEncoder();

/** What the engine offers (TC39 Uint8Array base64) and the TypeScript libs do not declare yet. */
type Base64Target = Uint8Array & { setFromBase64(text: string): { read: number; written: number } };
type Base64Source = Uint8Array & { toBase64(): string };

/** Characters of the base64 form of `byteLength` bytes. */
export function base64Length(byteLength: number): number {
  return Math.ceil(byteLength / 3) * 4;
}

/**
 * Writes the base64 form of `source` into `target` at `at`; returns the
 * characters written. Buffer#toString("base64") of a whole 2 MiB chunk makes
 * one 2.8 MB string, which the engine allocates and frees as fresh pages each
 * time; in slices of 48 KiB the strings stay small enough to be recycled.
 * Uint8Array#toBase64 encodes a slice in half the time Buffer#toString takes,
 * and TextEncoder#encodeInto copies its ASCII out faster than Buffer#write
 * with "latin1" (per 2 MiB: 0.23 against 0.51 ms here, 12.7 against 19.4 ms
 * in the TCG guest, where 12 KiB slices also cost more).
 */
export function encodeBase64Into(source: Uint8Array, target: Buffer, at: number): number {
  if (at + base64Length(source.length) > target.length) throw new RangeError("base64 target too small");
  let end = at;
  for (let from = 0; from < source.length; from += SLICE_BYTES) {
    end += asciiEncoder.encodeInto((source.subarray(from, from + SLICE_BYTES) as Base64Source).toBase64(), target.subarray(end)).written;
  }
  return end - at;
}

/** Characters checked per slice by isBase64: 12 KiB decoded, into a scratch kept for it. */
const CHECK_SLICE_CHARS = 16 * 1024;
const checkScratch = new Uint8Array((CHECK_SLICE_CHARS / 4) * 3) as Base64Target;

/**
 * Texts of up to this many bytes are checked by decoding them whole into a
 * kept buffer, which the decode that follows the check (decodeBase64Into)
 * then copies: one decode instead of two, which in the TCG guest is 19 ms
 * per 2 MiB saved. Our client's upload chunks arrive as Base64Bytes and
 * never get here; a host whose JSON writes "/" as "\/" sends chunks that stay
 * strings, and does. Larger texts are checked in slices, keeping nothing.
 */
const CHECKED_KEPT_MAX_BYTES = 4 * 1024 * 1024;
let checkedBuffer = new Uint8Array(0) as Base64Target;
/**
 * The text isBase64 last accepted whole and its bytes. Forgotten once the
 * current task's microtasks have run: the schema check and the handler's
 * decode run in one synchronous call, and the text is not kept alive after.
 */
let lastChecked: { text: string; bytes: Uint8Array } | null = null;
const forgetLastChecked = () => {
  lastChecked = null;
};

/**
 * What z.base64() accepts: the standard alphabet, no whitespace, a length that
 * is a multiple of 4, "=" padding only at the very end. Its check went through
 * atob, a fresh 2 MiB string per upload chunk; this one decodes into kept
 * memory, and a text that decodes to fewer bytes than its characters promise
 * held whitespace or padding where none may be.
 */
export function isBase64(text: string): boolean {
  if (text.length % 4 !== 0) return false;
  const expected = base64DecodedLength(text);
  if (text.length > CHECK_SLICE_CHARS && expected <= CHECKED_KEPT_MAX_BYTES) return checkWhole(text, expected);
  const padding = (text.length / 4) * 3 - expected;
  for (let from = 0; from < text.length; from += CHECK_SLICE_CHARS) {
    const slice = text.slice(from, from + CHECK_SLICE_CHARS);
    const last = from + CHECK_SLICE_CHARS >= text.length;
    let written: number;
    try {
      ({ written } = checkScratch.setFromBase64(slice));
    } catch {
      return false; // A character outside the alphabet, or data after padding.
    }
    if (written !== (slice.length / 4) * 3 - (last ? padding : 0)) return false;
  }
  return true;
}

function checkWhole(text: string, expected: number): boolean {
  lastChecked = null; // Its bytes are about to be overwritten.
  if (checkedBuffer.length < expected) checkedBuffer = new Uint8Array(expected) as Base64Target;
  let written: number;
  try {
    ({ written } = checkedBuffer.setFromBase64(text));
  } catch {
    return false; // A character outside the alphabet, or data after padding.
  }
  if (written !== expected) return false;
  if (lastChecked === null) queueMicrotask(forgetLastChecked);
  lastChecked = { text, bytes: checkedBuffer.subarray(0, written) };
  return true;
}

/** Bytes that base64 isBase64 accepted decodes to. */
export function base64DecodedLength(value: Base64Value): number {
  if (value instanceof Base64Bytes) return value.bytes.length;
  return (value.length / 4) * 3 - (value.endsWith("==") ? 2 : value.endsWith("=") ? 1 : 0);
}

/** Decodes base64 that isBase64 accepted into `target`; returns the view of it that holds the bytes. */
export function decodeBase64Into(text: string, target: Uint8Array): Uint8Array {
  if (base64DecodedLength(text) > target.length) throw new RangeError("base64 target too small");
  if (lastChecked?.text === text) {
    const { bytes } = lastChecked;
    lastChecked = null;
    target.set(bytes);
    return target.subarray(0, bytes.length);
  }
  const { written } = (target as Base64Target).setFromBase64(text);
  return target.subarray(0, written);
}

/**
 * Bytes a message carries as a base64 string. In a result (copy_from_guest's
 * content_base64), the reply encoder (response-frames.ts) writes them into
 * its frame with encodeBase64Into, then calls release() so the owner may
 * reuse the memory. In a request, they are a long base64 string checked and
 * decoded as its frame was parsed (decode(), from parse-frame.ts), so that
 * the string itself was never made: the schema's base64 fields take them in
 * place of a string, and their holder calls release() once done (one nobody
 * released is simply collected). JSON.stringify writes them as the string
 * (toJSON). After release() the bytes must not be read again.
 */
export class Base64Bytes {
  private released = false;

  constructor(
    readonly bytes: Uint8Array,
    private readonly onRelease: () => void = () => {},
  ) {}

  /** The bytes of `text` (base64 as ASCII bytes), decoded into a kept buffer; null when it is not base64 as isBase64 defines it. */
  static decode(text: Uint8Array): Base64Bytes | null {
    if (text.length % 4 !== 0) return null;
    const buffer = decodedBuffers.take((text.length / 4) * 3);
    const written = decodeBase64Bytes(text, buffer);
    if (written < 0) {
      decodedBuffers.giveBack(buffer);
      return null;
    }
    return new Base64Bytes(buffer.subarray(0, written), () => decodedBuffers.giveBack(buffer));
  }

  toJSON(): string {
    return this.toString();
  }

  toString(): string {
    if (this.released) throw new Error("Base64Bytes read after release");
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength).toString("base64");
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.onRelease();
  }
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const PAD = 0x3d;

/**
 * A character's 6 bits placed for its position in a group of four (first
 * character in bits 18-23, last in 0-5); -1 for any other byte, so that one
 * OR of a group's four lookups is negative when any of them is not base64.
 */
const SEXTETS = [18, 12, 6, 0].map((shift) => {
  const table = new Int32Array(256).fill(-1);
  for (let value = 0; value < 64; value++) table[ALPHABET.charCodeAt(value)] = value << shift;
  return table;
});

/**
 * Decodes base64 text held as bytes (a request's frame) into `target`;
 * returns the bytes written, or -1 when the text is not what isBase64
 * accepts. It takes a multi-MB text without making it a string first.
 * Written out in JavaScript, as there is no native decode from bytes: 2 MiB
 * in 0.9 ms here, against 0.4 for making the string and decoding it
 * natively, but 11 against 19-31 ms in the TCG guest, where the native
 * decoder's vector instructions are emulated one by one; and the multi-MB
 * string it no longer makes was what kept full collections in every upload.
 */
export function decodeBase64Bytes(text: Uint8Array, target: Uint8Array): number {
  const length = text.length;
  if (length % 4 !== 0) return -1;
  if (length === 0) return 0;
  const padding = text[length - 1] !== PAD ? 0 : text[length - 2] !== PAD ? 1 : 2;
  const decodedLength = (length / 4) * 3 - padding;
  if (decodedLength > target.length) throw new RangeError("base64 target too small");
  const [first, second, third, fourth] = SEXTETS as [Int32Array, Int32Array, Int32Array, Int32Array];
  const out = new DataView(target.buffer, target.byteOffset, target.byteLength);
  const lastGroup = length - 4;
  let at = 0;
  let written = 0;
  // Four groups at a time, their 12 bytes stored as three words: a third of the stores, which the guest feels.
  for (; at + 16 <= lastGroup; at += 16) {
    const a = first[text[at]!]! | second[text[at + 1]!]! | third[text[at + 2]!]! | fourth[text[at + 3]!]!;
    const b = first[text[at + 4]!]! | second[text[at + 5]!]! | third[text[at + 6]!]! | fourth[text[at + 7]!]!;
    const c = first[text[at + 8]!]! | second[text[at + 9]!]! | third[text[at + 10]!]! | fourth[text[at + 11]!]!;
    const d = first[text[at + 12]!]! | second[text[at + 13]!]! | third[text[at + 14]!]! | fourth[text[at + 15]!]!;
    if ((a | b | c | d) < 0) return -1;
    out.setUint32(written, (a << 8) | (b >>> 16));
    out.setUint32(written + 4, (b << 16) | (c >>> 8));
    out.setUint32(written + 8, (c << 24) | d);
    written += 12;
  }
  for (; at < lastGroup; at += 4) {
    const group = first[text[at]!]! | second[text[at + 1]!]! | third[text[at + 2]!]! | fourth[text[at + 3]!]!;
    if (group < 0) return -1;
    target[written] = group >> 16;
    target[written + 1] = group >> 8;
    target[written + 2] = group;
    written += 3;
  }
  // The last group, where "=" may stand for the third and fourth characters or the fourth alone.
  const group =
    first[text[at]!]! | second[text[at + 1]!]! | (padding === 2 ? 0 : third[text[at + 2]!]!) | (padding >= 1 ? 0 : fourth[text[at + 3]!]!);
  if (group < 0) return -1;
  target[written] = group >> 16;
  if (padding < 2) target[written + 1] = group >> 8;
  if (padding < 1) target[written + 2] = group;
  return decodedLength;
}

/** Buffers for the bytes Base64Bytes.decode decodes: two, as the client pipelines two upload chunks; up to 4 MiB kept. */
const decodedBuffers = new BufferPool(2, 4 * 1024 * 1024);

/** A base64 field's value as the schema passes it on: the text, or its bytes already decoded. */
export type Base64Value = string | Base64Bytes;

/** A base64 field's bytes until release(): a Base64Bytes' own, or the text decoded into a buffer taken from `pool`. */
export function takeBase64Bytes(value: Base64Value, pool: BufferPool): { bytes: Uint8Array; release: () => void } {
  if (value instanceof Base64Bytes) return { bytes: value.bytes, release: () => value.release() };
  const buffer = pool.take(base64DecodedLength(value));
  return { bytes: decodeBase64Into(value, buffer), release: () => pool.giveBack(buffer) };
}

/** A base64 field's bytes in a Buffer of their own. */
export function base64Buffer(value: Base64Value): Buffer {
  if (typeof value === "string") return Buffer.from(value, "base64");
  const copy = Buffer.from(value.bytes);
  value.release();
  return copy;
}
