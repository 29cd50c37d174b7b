/**
 * guest-set-user-password as qemu-ga does it: the base64 password is
 * decoded, checked, and handed to chpasswd (chpasswd -e when it is already
 * crypted) on its stdin — never on a command line, never logged.
 */
import { findTool } from "../power/power.ts";
import { decodeQemuBase64 } from "./base64.ts";
import { genericError } from "./errors.ts";

export async function guestSetUserPassword(
  username: string,
  passwordBase64: string,
  crypted: boolean,
  chpasswd: string | null = findTool("chpasswd"),
): Promise<Record<string, never>> {
  const raw = decodeQemuBase64(passwordBase64);
  // qemu-ga handles the password as a C string: it ends at the first NUL.
  const nul = raw.indexOf(0);
  const password = nul >= 0 ? raw.subarray(0, nul) : raw;
  if (password.includes(0x0a)) throw genericError("forbidden characters in raw password");
  if (username.includes("\n") || username.includes(":")) throw genericError("forbidden characters in username");
  if (!chpasswd) throw genericError("cannot find 'passwd' program in PATH"); // sic: qemu-ga's words
  const child = Bun.spawn(crypted ? [chpasswd, "-e"] : [chpasswd], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
  child.stdin.write(Buffer.concat([Buffer.from(`${username}:`), password, Buffer.from("\n")]));
  await child.stdin.end();
  await child.exited;
  if (child.signalCode !== null) throw genericError("child process has terminated abnormally");
  if (child.exitCode !== 0) throw genericError("child process has failed to set user password");
  return {};
}
