/**
 * Responses as length-prefixed frames. Most go through JSON.stringify. A
 * result that carries Base64Bytes (a file chunk) is laid out by hand instead:
 * its other members through JSON.stringify, the bytes encoded into the frame
 * (encodeBase64Into), in one buffer kept for the next such reply. A 2 MiB chunk used to
 * become a 2.8 MB base64 string, a 2.8 MB JSON text and a 2.8 MB frame, all
 * fresh memory: their page faults and collection cost more than the read,
 * hash and encoding together.
 *
 * A kept frame is only valid until the next encode(): the agent is one
 * thread and Connection.send copies whatever it cannot write at once.
 */
import { edenGC } from "bun:jsc";
import { Base64Bytes, base64Length, encodeBase64Into } from "./base64.ts";
import { encodeFrame, HEADER_BYTES } from "./framing.ts";
import type { Response } from "./jsonrpc.ts";

/** The largest frame built in the kept buffer (a 2 MiB chunk's is 2.8 MB); a larger one gets a buffer of its own. */
const KEPT_FRAME_BYTES = 4 * 1024 * 1024;

export class ResponseFrames {
  private kept = Buffer.alloc(0);

  /** The frame of `response` (or of a batch); may be a view of the kept buffer (see isKept). */
  encode(response: Response | Response[]): Uint8Array {
    const pieces = Array.isArray(response) ? null : binaryPieces(response);
    return pieces ? this.layOut(pieces, HEADER_BYTES) : encodeFrame(JSON.stringify(response));
  }

  /** Text and Base64Bytes pieces laid out as one line, without a length header (QGA); may be a view of the kept buffer. */
  encodeLine(pieces: (string | Base64Bytes)[]): Uint8Array {
    return this.layOut(pieces, 0);
  }

  /** True when `frame` lives in the kept buffer: whoever holds on to it past the next encode() must copy it. */
  isKept(frame: Uint8Array): boolean {
    return frame.buffer === this.kept.buffer;
  }

  private layOut(pieces: (string | Base64Bytes)[], headerBytes: number): Buffer {
    let length = headerBytes;
    for (const piece of pieces) length += typeof piece === "string" ? Buffer.byteLength(piece, "utf8") : 2 + base64Length(piece.bytes.length);
    let frame: Buffer;
    if (length > KEPT_FRAME_BYTES) frame = Buffer.allocUnsafeSlow(length);
    else {
      if (this.kept.length < length) this.kept = Buffer.allocUnsafeSlow(Math.min(KEPT_FRAME_BYTES, Math.max(length, this.kept.length * 2)));
      frame = this.kept.subarray(0, length);
    }
    if (headerBytes > 0) frame.writeUInt32BE(length - headerBytes, 0);
    let at = headerBytes;
    for (const piece of pieces) {
      if (typeof piece === "string") {
        at += frame.write(piece, at, "utf8");
        continue;
      }
      frame[at++] = 0x22;
      at += encodeLarge(piece.bytes, frame, at);
      frame[at++] = 0x22;
      piece.release();
    }
    return frame;
  }
}

/**
 * Bytes encoded in steps of ENCODE_STEP_BYTES with a young-generation
 * collection between them: each step leaves its 48 KiB base64 slices as
 * garbage, and a 48 MiB guest-file-read left 64 MB of them alive before the
 * engine collected (agent peak 249 MiB; 188 with the steps).
 */
function encodeLarge(bytes: Uint8Array, frame: Buffer, at: number): number {
  let written = 0;
  for (let from = 0; from < bytes.length; from += ENCODE_STEP_BYTES) {
    if (from > 0) edenGC();
    written += encodeBase64Into(bytes.subarray(from, from + ENCODE_STEP_BYTES), frame, at + written);
  }
  return written;
}

/** A multiple of 3, so that no step but the last has padding; larger than any chunk our client asks for. */
const ENCODE_STEP_BYTES = 6 * 1024 * 1024;

/**
 * A success whose result object has Base64Bytes members, as JSON text pieces
 * around those members, exactly as JSON.stringify would order and write them;
 * null for every other response.
 */
function binaryPieces(response: Response): (string | Base64Bytes)[] | null {
  if (!("result" in response)) return null;
  const result = response.result;
  if (!hasBase64Bytes(result)) return null;
  const members = Object.entries(result as object);
  const pieces: (string | Base64Bytes)[] = [];
  let text = `{"jsonrpc":"2.0","id":${JSON.stringify(response.id)},"result":{`;
  let separator = "";
  for (const [key, value] of members) {
    if (value instanceof Base64Bytes) {
      pieces.push(`${text}${separator}${JSON.stringify(key)}:`, value);
      text = "";
    } else {
      const json = JSON.stringify(value);
      if (json === undefined) continue; // JSON.stringify leaves such members out.
      text += `${separator}${JSON.stringify(key)}:${json}`;
    }
    separator = ",";
  }
  pieces.push(`${text}}}`);
  return pieces;
}

/** On every reply's path, so without allocating: most results are small plain objects with no Base64Bytes. */
export function hasBase64Bytes(result: unknown): boolean {
  if (typeof result !== "object" || result === null || Array.isArray(result)) return false;
  for (const key in result) if ((result as Record<string, unknown>)[key] instanceof Base64Bytes) return true;
  return false;
}

/** One for the whole agent: frames are built and handed to a connection without a pause in between. */
export const responseFrames = new ResponseFrames();
