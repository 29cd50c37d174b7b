import { Base64Bytes } from "../protocol/base64.ts";

/**
 * JSON as qemu writes it (qobject_to_json): ", " and ": " separators, every
 * character outside printable ASCII escaped as \uXXXX (surrogate pairs above
 * U+FFFF), and object members in QDict order — a hash table of 512 buckets
 * keyed by tdb_hash, walked bucket by bucket, the newest entry of a bucket
 * first. Members are inserted in the order of the object given (qapi schema
 * order), so replies come out byte for byte as qemu-ga's.
 *
 * With `binary`, Base64Bytes members are collected there, in order, and each
 * stands in the text as BINARY_MARK; the reply's writer encodes them in those
 * places (without it, they are written as the base64 string they stand for).
 */
export function qmpStringify(value: unknown, binary?: Base64Bytes[]): string {
  if (value === null || value === undefined) return "null";
  switch (typeof value) {
    case "string":
      return quote(value);
    case "number":
      if (!Number.isFinite(value)) return "null";
      return Number.isInteger(value) ? String(value) : formatDouble(value);
    case "bigint":
      return String(value);
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value instanceof Base64Bytes) {
        if (!binary) return quote(value.toString());
        binary.push(value);
        return BINARY_MARK;
      }
      if (Array.isArray(value)) return `[${value.map((item) => qmpStringify(item, binary)).join(", ")}]`;
      const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
      return `{${qdictOrder(entries)
        .map(([k, v]) => `${quote(k)}: ${qmpStringify(v, binary)}`)
        .join(", ")}}`;
    }
    default:
      return "null";
  }
}

/** Where a collected Base64Bytes stands in qmpStringify's text: a raw NUL, which quote() never leaves unescaped. */
export const BINARY_MARK = "\u0000";

/** Printable ASCII but '"' and '\\': what needs no escape (base64 file data, most names). */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

function quote(text: string): string {
  // A 4 MiB guest-file-read is 5.6 million characters: appending them one by one made the read 5× slower than qemu-ga's.
  if (PLAIN.test(text)) return `"${text}"`;
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0x22) out += '\\"';
    else if (code === 0x5c) out += "\\\\";
    else if (code === 0x08) out += "\\b";
    else if (code === 0x0c) out += "\\f";
    else if (code === 0x0a) out += "\\n";
    else if (code === 0x0d) out += "\\r";
    else if (code === 0x09) out += "\\t";
    else if (code >= 0x20 && code < 0x7f) out += text[i];
    else out += `\\u${code.toString(16).toUpperCase().padStart(4, "0")}`;
  }
  return `${out}"`;
}

/** C's "%.17g", as qemu prints a double: 17 significant digits, trailing zeros dropped. */
function formatDouble(value: number): string {
  // %g goes exponential below 1e-4; toPrecision only below 1e-6.
  const text = Math.abs(value) < 1e-4 ? value.toExponential(16) : value.toPrecision(17);
  if (text.includes("e")) {
    const [mantissa, exponent] = text.split("e") as [string, string];
    const digits = Number(exponent);
    return `${mantissa.replace(/\.?0+$/, "")}e${digits < 0 ? "-" : "+"}${String(Math.abs(digits)).padStart(2, "0")}`;
  }
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

const QDICT_BUCKETS = 512;

/** qemu's util/qdict.c tdb_hash, in 32-bit unsigned arithmetic. */
export function tdbHash(key: string): number {
  let value = Math.imul(0x238f13af, key.length) >>> 0;
  for (let i = 0; i < key.length; i++) value = (value + ((key.charCodeAt(i) << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

function qdictOrder<T>(entries: [string, T][]): [string, T][] {
  return entries
    .map((entry, inserted) => ({ entry, inserted, bucket: tdbHash(entry[0]) % QDICT_BUCKETS }))
    .sort((a, b) => a.bucket - b.bucket || b.inserted - a.inserted)
    .map(({ entry }) => entry);
}
