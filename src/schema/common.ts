import { z } from "zod";
import { isBase64 } from "../protocol/base64.ts";

/** Absolute guest path; the file service confines it to allowed_file_paths. */
export const guestPath = z.string().min(1).max(4096).describe("Absolute path in the guest");

/** z.base64()'s rules and error, checked without a copy of the decoded bytes (isBase64); the JSON Schema says the same. */
export const base64 = z
  .string()
  .check((context) => {
    if (!isBase64(context.value)) {
      context.issues.push({ code: "invalid_format", format: "base64", input: context.value, message: "Invalid base64-encoded string" });
    }
  })
  .meta({ format: "base64", contentEncoding: "base64", pattern: "^$|^(?:[0-9a-zA-Z+/]{4})*(?:(?:[0-9a-zA-Z+/]{2}==)|(?:[0-9a-zA-Z+/]{3}=))?$" })
  .describe("Bytes, base64-encoded");

/** File mode as a number (420) or an octal string ("0644"). */
export const fileMode = z
  .union([z.number().int().min(0).max(0o7777), z.string().regex(/^0?[0-7]{3,4}$/, "must be an octal mode like \"0644\"")])
  .transform((mode) => (typeof mode === "number" ? mode : Number.parseInt(mode, 8)))
  .describe("Permission bits: a number (420) or an octal string (\"0644\")");

export const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits").describe("SHA-256, lowercase hex");
