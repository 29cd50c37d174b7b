import { z } from "zod";
import { type Base64Value, Base64Bytes, isBase64 } from "../protocol/base64.ts";

/** Absolute guest path; the file service confines it to allowed_file_paths. */
export const guestPath = z.string().min(1).max(4096).describe("Absolute path in the guest");

/**
 * z.base64()'s rules and messages, checked without a copy of the decoded
 * bytes (isBase64); the JSON Schema says the same. A field also takes the
 * Base64Bytes that the agent's frame parser makes of a long string in a
 * request's params field named "*_base64" (parse-frame.ts): every base64
 * field is named so, and no other params field is (test/schema.test.ts).
 * On the wire, and so for the client (z.input), the field is a string.
 */
const base64Field = z.custom<Base64Value>((value) => value instanceof Base64Bytes || (typeof value === "string" && isBase64(value)), {
  error: ({ input }) =>
    typeof input === "string" ? "Invalid base64-encoded string" : `expected string, received ${input === null ? "null" : Array.isArray(input) ? "array" : typeof input}`,
});
// A custom type has no JSON Schema of its own: it is the wire's string. (Set on this instance: .meta() or .check()
// would make a copy, and the copy would be the one converted.)
base64Field._zod.toJSONSchema = () => ({
  type: "string",
  format: "base64",
  contentEncoding: "base64",
  pattern: "^$|^(?:[0-9a-zA-Z+/]{4})*(?:(?:[0-9a-zA-Z+/]{2}==)|(?:[0-9a-zA-Z+/]{3}=))?$",
  description: "Bytes, base64-encoded",
});
export const base64 = base64Field as unknown as z.ZodType<Base64Value, string>;

/** File mode as a number (420) or an octal string ("0644"). */
export const fileMode = z
  .union([z.number().int().min(0).max(0o7777), z.string().regex(/^0?[0-7]{3,4}$/, "must be an octal mode like \"0644\"")])
  .transform((mode) => (typeof mode === "number" ? mode : Number.parseInt(mode, 8)))
  .describe("Permission bits: a number (420) or an octal string (\"0644\")");

export const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits").describe("SHA-256, lowercase hex");
