/**
 * A user's password set as qemu-ga sets it: checked, then handed to chpasswd
 * (chpasswd -e when it is already crypted) on its stdin — never on a command
 * line, never logged. Each protocol decodes its own form of the password
 * (QGA's base64, the native protocol's plain string) before it gets here.
 */
import { findTool } from "../power/power.ts";
import { failed, GuestError } from "./errors.ts";

export async function setUserPassword(username: string, password: Uint8Array, crypted: boolean, chpasswd: string | null = findTool("chpasswd")): Promise<void> {
  if (password.includes(0x0a)) throw new GuestError("invalid", "forbidden characters in raw password", "the password must not contain a newline");
  if (username.includes("\n") || username.includes(":")) throw new GuestError("invalid", "forbidden characters in username", "the username must not contain ':' or a newline");
  if (!chpasswd) throw failed("cannot find 'passwd' program in PATH", "cannot set a password: the guest has no chpasswd"); // sic: qemu-ga's words
  const child = Bun.spawn(crypted ? [chpasswd, "-e"] : [chpasswd], { stdin: "pipe", stdout: "ignore", stderr: "ignore" });
  child.stdin.write(Buffer.concat([Buffer.from(`${username}:`), password, Buffer.from("\n")]));
  await child.stdin.end();
  await child.exited;
  if (child.signalCode !== null) throw failed("child process has terminated abnormally", "chpasswd was killed");
  if (child.exitCode !== 0) throw failed("child process has failed to set user password", `chpasswd failed to set the password of '${username}'`);
}
