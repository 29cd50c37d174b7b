/**
 * Base64 (RFC 4648, with padding) for file chunks, without multi-MB copies:
 * encoded into a reply's frame, checked and decoded into kept buffers, and
 * Base64Bytes, the result member that carries bytes until the frame is built.
 */

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
 * Texts of up to this many bytes (an upload chunk: our client sends 2 MiB)
 * are checked by decoding them whole into a kept buffer, which the decode
 * that follows the check (decodeBase64Into) then copies: one decode per
 * chunk instead of two, which in the TCG guest is 19 ms per 2 MiB saved.
 * Larger texts are checked in slices, keeping nothing.
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
export function base64DecodedLength(text: string): number {
  return (text.length / 4) * 3 - (text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0);
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
 * Bytes a result carries as a base64 string (copy_from_guest's
 * content_base64). JSON.stringify writes them as that string (toJSON); the
 * reply encoder (response-frames.ts) writes them into its frame with
 * encodeBase64Into instead, then calls release() so the owner may reuse the
 * memory. After release() the bytes must not be read again.
 */
export class Base64Bytes {
  private released = false;

  constructor(
    readonly bytes: Uint8Array,
    private readonly onRelease: () => void = () => {},
  ) {}

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
