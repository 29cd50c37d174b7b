/** guest-set-user-password's argument as qemu-ga reads it: base64 (qemu's rules), a C string that ends at the first NUL. */
import { decodeQemuBase64 } from "./base64.ts";

export function qgaPassword(passwordBase64: string): Buffer {
  const raw = decodeQemuBase64(passwordBase64);
  const nul = raw.indexOf(0);
  return nul >= 0 ? raw.subarray(0, nul) : raw;
}
