/**
 * guest-set-user-password hands "user:password\n" to chpasswd on stdin
 * (with -e for a crypted one); here chpasswd is a script that records what
 * it was given. The VM test sets a real password in a guest.
 */
import { afterAll, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QgaError } from "../src/qga/errors.ts";
import { decodeQemuBase64 } from "../src/qga/base64.ts";
import { guestSetUserPassword } from "../src/qga/password.ts";

const dir = mkdtempSync(join(tmpdir(), "kma-chpasswd-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fakeChpasswd(exitCode: number): string {
  const path = join(dir, `chpasswd-${exitCode}`);
  writeFileSync(path, `#!/bin/sh\necho "$@" > ${dir}/args\ncat > ${dir}/stdin\nexit ${exitCode}\n`);
  chmodSync(path, 0o755);
  return path;
}

const b64 = (text: string) => Buffer.from(text).toString("base64");

async function refusal(run: Promise<unknown>): Promise<string> {
  const error = await run.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(QgaError);
  return (error as QgaError).desc;
}

test("a plain password goes to chpasswd's stdin, a crypted one with -e", async () => {
  const chpasswd = fakeChpasswd(0);
  expect(await guestSetUserPassword("alice", b64("s3cret pass"), false, chpasswd)).toEqual({});
  expect(readFileSync(join(dir, "stdin"), "utf8")).toBe("alice:s3cret pass\n");
  expect(readFileSync(join(dir, "args"), "utf8")).toBe("\n");
  await guestSetUserPassword("alice", b64("$6$salt$hash"), true, chpasswd);
  expect(readFileSync(join(dir, "stdin"), "utf8")).toBe("alice:$6$salt$hash\n");
  expect(readFileSync(join(dir, "args"), "utf8")).toBe("-e\n");
});

test("the password ends at a NUL byte, as qemu-ga's C string does", async () => {
  await guestSetUserPassword("bob", Buffer.from("abc\0def").toString("base64"), false, fakeChpasswd(0));
  expect(readFileSync(join(dir, "stdin"), "utf8")).toBe("bob:abc\n");
});

test("bad input is refused before chpasswd runs, in qemu-ga's words", async () => {
  const never = join(dir, "never-run");
  expect(await refusal(guestSetUserPassword("bob", b64("a\nb"), false, never))).toBe("forbidden characters in raw password");
  expect(await refusal(guestSetUserPassword("bob:x", b64("pw"), false, never))).toBe("forbidden characters in username");
  expect(await refusal(guestSetUserPassword("bob\nx", b64("pw"), false, never))).toBe("forbidden characters in username");
  expect(await refusal(guestSetUserPassword("bob", "not base64!", false, never))).toBe("Base64 data contains invalid characters");
  expect(await refusal(guestSetUserPassword("bob", b64("pw"), false, null))).toBe("cannot find 'passwd' program in PATH");
});

test("chpasswd failing is reported", async () => {
  expect(await refusal(guestSetUserPassword("nobody-here", b64("pw"), false, fakeChpasswd(1)))).toBe("child process has failed to set user password");
});

test("qemu's base64 rules: its alphabet, '=' and newlines only", () => {
  expect(decodeQemuBase64("YW\nJj").toString()).toBe("abc");
  expect(() => decodeQemuBase64("YW Jj")).toThrow("Base64 data contains invalid characters");
  expect(() => decodeQemuBase64("YQ\0")).toThrow("Base64 data contains embedded NUL characters");
});
