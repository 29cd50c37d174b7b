/**
 * A password is handed to chpasswd as "user:password\n" on stdin (with -e
 * for a crypted one); here chpasswd is a script that records what it was
 * given. QGA's base64 form is decoded first, qemu-ga's way. The VM tests set
 * real passwords in a guest, through both protocols.
 */
import { afterAll, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestError } from "../src/guest/errors.ts";
import { setUserPassword } from "../src/guest/password.ts";
import { decodeQemuBase64 } from "../src/qga/base64.ts";
import { QgaError } from "../src/qga/errors.ts";
import { qgaPassword } from "../src/qga/password.ts";

const dir = mkdtempSync(join(tmpdir(), "kma-chpasswd-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fakeChpasswd(exitCode: number): string {
  const path = join(dir, `chpasswd-${exitCode}`);
  writeFileSync(path, `#!/bin/sh\necho "$@" > ${dir}/args\ncat > ${dir}/stdin\nexit ${exitCode}\n`);
  chmodSync(path, 0o755);
  return path;
}

const bytes = (text: string) => Buffer.from(text);

async function refusal(run: Promise<unknown>): Promise<GuestError> {
  const error = await run.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(GuestError);
  return error as GuestError;
}

test("a plain password goes to chpasswd's stdin, a crypted one with -e", async () => {
  const chpasswd = fakeChpasswd(0);
  await setUserPassword("alice", bytes("s3cret pass"), false, chpasswd);
  expect(readFileSync(join(dir, "stdin"), "utf8")).toBe("alice:s3cret pass\n");
  expect(readFileSync(join(dir, "args"), "utf8")).toBe("\n");
  await setUserPassword("alice", bytes("$6$salt$hash"), true, chpasswd);
  expect(readFileSync(join(dir, "stdin"), "utf8")).toBe("alice:$6$salt$hash\n");
  expect(readFileSync(join(dir, "args"), "utf8")).toBe("-e\n");
});

test("QGA's password is base64 that ends at a NUL byte, as qemu-ga's C string does", () => {
  expect(qgaPassword(Buffer.from("abc\0def").toString("base64")).toString()).toBe("abc");
  expect(qgaPassword(Buffer.from("pässword").toString("base64")).toString()).toBe("pässword");
  expect(() => qgaPassword("not base64!")).toThrow(QgaError);
});

test("bad input is refused before chpasswd runs, in qemu-ga's words for QGA and as invalid input for the native protocol", async () => {
  const never = join(dir, "never-run");
  expect(await refusal(setUserPassword("bob", bytes("a\nb"), false, never))).toMatchObject({ reason: "invalid", qemuDesc: "forbidden characters in raw password" });
  expect(await refusal(setUserPassword("bob:x", bytes("pw"), false, never))).toMatchObject({ reason: "invalid", qemuDesc: "forbidden characters in username" });
  expect(await refusal(setUserPassword("bob\nx", bytes("pw"), false, never))).toMatchObject({ qemuDesc: "forbidden characters in username" });
  expect(await refusal(setUserPassword("bob", bytes("pw"), false, null))).toMatchObject({ reason: "failed", qemuDesc: "cannot find 'passwd' program in PATH" });
});

test("chpasswd failing is reported, naming the user and never the password", async () => {
  const error = await refusal(setUserPassword("nobody-here", bytes("pw-secret"), false, fakeChpasswd(1)));
  expect(error).toMatchObject({ reason: "failed", qemuDesc: "child process has failed to set user password" });
  expect(error.message).toBe("chpasswd failed to set the password of 'nobody-here'");
});

test("qemu's base64 rules: its alphabet, '=' and newlines only", () => {
  expect(decodeQemuBase64("YW\nJj").toString()).toBe("abc");
  expect(() => decodeQemuBase64("YW Jj")).toThrow("Base64 data contains invalid characters");
  expect(() => decodeQemuBase64("YQ\0")).toThrow("Base64 data contains embedded NUL characters");
});
