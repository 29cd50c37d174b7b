/** Base64 arguments (guest-file-write, guest-set-user-password) checked as qemu checks them. */
import { genericError } from "./errors.ts";

/** qemu's qbase64_decode: only the base64 alphabet, '=' and newlines, anywhere (glib decodes the rest). */
export function decodeQemuBase64(text: string): Buffer {
  if (text.includes("\0")) throw genericError("Base64 data contains embedded NUL characters");
  if (!/^[A-Za-z0-9+/=\n]*$/.test(text)) throw genericError("Base64 data contains invalid characters");
  return Buffer.from(text, "base64");
}
