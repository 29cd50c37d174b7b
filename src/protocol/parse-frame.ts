/**
 * A frame's payload as a JSON value. An upload chunk's frame is one long
 * base64 string in a little JSON: decoded and parsed whole, it made two
 * multi-MB strings (the text and the parsed value), alive together while the
 * parse allocated, so the engine's own collections promoted them and only a
 * full collection freed them. Here the long string is cut out of the bytes
 * first: the rest is parsed, and the string is made once, from its bytes,
 * and dies young. The result is the value JSON.parse gives for the whole text:
 * the cut is only taken for a run of plain ASCII between two unescaped
 * quotes, the rest must parse with the stand-in as a value, and anything else
 * parses the whole text as before.
 *
 * The agent goes one step further for a long string that is a request's
 * params field named "*_base64" (every base64 field's name, and no other
 * field's, see schema/common.ts; deeper down, as in exec's env, a key is the
 * host's to choose): such a string is decoded straight from the frame's
 * bytes into a Base64Bytes, and never made at all. Its 2.8 MB per upload
 * chunk were the engine's main work in the TCG guest: making the string,
 * checking it, decoding it natively and, since the strings that outlived an
 * eden collection piled up, a full collection every 16 MiB. Text that is not
 * base64 stays a string, for the schema to refuse with its own error.
 */
import { Base64Bytes } from "./base64.ts";

/** Frames from this size up are looked at for one long string. */
const LONG_FRAME_BYTES = 64 * 1024;
/** A string this long (bytes between its quotes) is cut out. */
const LONG_STRING_BYTES = 32 * 1024;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Stands in the parsed text for the long string: a string no host sends (NUL and 128 random bits). */
const PLACEHOLDER = `\u0000kma-long-string-${crypto.getRandomValues(new Uint32Array(4)).join("-")}`;

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export interface ParseOptions {
  /** Give a long base64 string in a request's params field named "*_base64" as a Base64Bytes (the agent's requests; a client keeps strings). */
  decodeBase64Fields?: boolean;
}

/** JSON.parse of the payload as UTF-8; throws an Error that says what was wrong. */
export function parseFramePayload(payload: Uint8Array, options: ParseOptions = {}): unknown {
  if (payload.length >= LONG_FRAME_BYTES) {
    const parsed = parseAroundLongString(payload, options.decodeBase64Fields === true);
    if (parsed !== undefined) return parsed.value;
  }
  let text: string;
  try {
    text = utf8.decode(payload);
  } catch {
    throw new Error("frame is not valid UTF-8");
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error((error as Error).message);
  }
}

/** The parsed value, or undefined when the fast way does not apply (the caller then parses the whole text). */
function parseAroundLongString(payload: Uint8Array, decodeBase64Fields: boolean): { value: unknown } | undefined {
  const span = longestString(payload);
  if (!span || span.end - span.start < LONG_STRING_BYTES) return undefined;
  const { start, end } = span;
  const inside = payload.subarray(start, end);
  let rest: string;
  try {
    rest = utf8.decode(payload.subarray(0, start)) + JSON.stringify(PLACEHOLDER).slice(1, -1) + utf8.decode(payload.subarray(end));
  } catch {
    return undefined;
  }
  let value: unknown;
  try {
    value = JSON.parse(rest);
  } catch {
    return undefined; // Not JSON after all: the whole text's parse gives the exact error.
  }
  if (value === PLACEHOLDER) {
    const text = plainText(inside);
    return text === undefined ? undefined : { value: text };
  }
  const found = findPlaceholder(value);
  // Not found as a value (the long string was a key): the whole text's parse, then.
  if (!found) return undefined;
  // Base64's alphabet is plain ASCII: whatever decodes is the JSON string's own value.
  const base64Field = decodeBase64Fields && found.key.endsWith("_base64") && isRequestParams(value, found.container);
  const decoded = base64Field ? Base64Bytes.decode(inside) : null;
  const replacement = decoded ?? plainText(inside);
  if (replacement === undefined) return undefined;
  found.container[found.key] = replacement;
  return { value };
}

/**
 * The string a run of bytes between quotes stands for, when it is plain ASCII: only then is it its own JSON value
 * byte for byte (no escapes, nothing to decode, and no control characters, which JSON.parse refuses raw in a
 * string); undefined otherwise.
 */
function plainText(inside: Uint8Array): string | undefined {
  if (!isPlainAscii(inside)) return undefined;
  // "ascii" makes the same string from ASCII bytes as "latin1", in a fifth of the time (2.8 MB: 0.4 against 1.9 ms
  // here, 5.5 against 9.9 ms in the TCG guest).
  return Buffer.from(inside.buffer, inside.byteOffset, inside.byteLength).toString("ascii");
}

/** Whether `container` is the params object of the request `value`, or of a request in the batch `value`. */
function isRequestParams(value: unknown, container: object): boolean {
  const requests = Array.isArray(value) ? value : [value];
  return requests.some((request) => typeof request === "object" && request !== null && (request as { params?: unknown }).params === container);
}

/** The longest string token's contents [start, end) (between its quotes), from the positions of unescaped quotes. */
function longestString(payload: Uint8Array): { start: number; end: number } | null {
  let best: { start: number; end: number } | null = null;
  let open = -1;
  for (let at = payload.indexOf(QUOTE); at >= 0; at = payload.indexOf(QUOTE, at + 1)) {
    if (open >= 0 && isEscaped(payload, at)) continue;
    if (open < 0) open = at;
    else {
      if (!best || at - open - 1 > best.end - best.start) best = { start: open + 1, end: at };
      open = -1;
    }
  }
  return best;
}

/**
 * Whether `bytes` hold only printable ASCII other than the backslash: no byte
 * of 0x80 or above, none below 0x20, no 0x5C. Node and Bun offer no native
 * scan for a byte range, so this one tests four bytes at a time, in the one
 * pass that replaced three (isAscii, indexOf and this loop: in the TCG guest
 * the two native scans alone cost 3 ms per 2.8 MB):
 *  - a byte's own top bit marks it as 0x80 or above;
 *  - a byte below 0x20 borrows when 0x20 is taken from it, which sets its top
 *    bit (a borrow can only carry on from a byte that is already marked);
 *  - a byte of 0x5C is 0 once XORed with 0x5C, and 0 - 1 sets its top bit
 *    where the XORed byte's own was clear.
 */
function isPlainAscii(bytes: Uint8Array): boolean {
  const head = Math.min(bytes.length, (4 - (bytes.byteOffset & 3)) & 3);
  const wordCount = (bytes.length - head) >>> 2;
  const tail = head + wordCount * 4;
  for (let at = 0; at < head; at++) if (!isPlainByte(bytes[at]!)) return false;
  for (let at = tail; at < bytes.length; at++) if (!isPlainByte(bytes[at]!)) return false;
  if (wordCount === 0) return true;
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset + head, wordCount);
  let marked = 0;
  for (let at = 0; at < wordCount; at++) {
    const word = words[at]!;
    const backslashes = word ^ 0x5c5c5c5c;
    marked |= word | (word - 0x20202020) | ((backslashes - 0x01010101) & ~backslashes);
  }
  return (marked & 0x80808080) === 0;
}

function isPlainByte(byte: number): boolean {
  return byte >= 0x20 && byte < 0x80 && byte !== BACKSLASH;
}

/** An odd run of backslashes before `at` escapes the quote there. */
function isEscaped(payload: Uint8Array, at: number): boolean {
  let run = 0;
  while (at - run - 1 >= 0 && payload[at - run - 1] === BACKSLASH) run++;
  return run % 2 === 1;
}

/** Where the PLACEHOLDER string is, at any depth below `container` (an array's key is its index); null when it is not there. */
function findPlaceholder(container: unknown): { container: Record<string, unknown>; key: string } | null {
  if (typeof container !== "object" || container === null) return null;
  const record = container as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (record[key] === PLACEHOLDER) return { container: record, key };
    const found = findPlaceholder(record[key]);
    if (found) return found;
  }
  return null;
}
