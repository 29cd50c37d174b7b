/**
 * guest-ssh-*-authorized-keys against a scratch home: qemu's own unit tests
 * (tests of qga/commands-posix-ssh.c) ported, plus what we add — no symlink
 * followed, no temporary file left behind, owner and modes as sshd wants.
 */
import { afterEach, beforeEach, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestError } from "../src/guest/errors.ts";
import { lookupPasswd, SshKeys, type PasswdEntry } from "../src/guest/ssh.ts";

let home: string;
let keys: SshKeys;
const ME = "tester";
const authorizedKeys = () => join(home, ".ssh", "authorized_keys");
const contents = () => readFileSync(authorizedKeys(), "utf8");
const setContents = (text: string) => {
  mkdirSync(join(home, ".ssh"), { recursive: true, mode: 0o700 });
  writeFileSync(authorizedKeys(), text);
};

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "kma-ssh-"));
  const me: PasswdEntry = { uid: process.getuid!(), gid: process.getgid!(), home };
  keys = new SshKeys((name) => (name === ME ? me : null));
});

afterEach(() => rmSync(home, { recursive: true, force: true }));

function refusal(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(GuestError);
    return (error as GuestError).qemuDesc;
  }
  throw new Error("expected a refusal");
}

test("an unknown user is refused with qemu-ga's words", () => {
  expect(refusal(() => keys.add("", [], false))).toBe("failed to lookup user '': Success");
  expect(refusal(() => keys.remove("someone", []))).toBe("failed to lookup user 'someone': Success");
});

test("a key that is a comment or spans lines is refused before anything is touched", () => {
  expect(refusal(() => keys.add(ME, ["not a valid\nkey"], false))).toBe("invalid OpenSSH public key: 'not a valid\nkey'");
  expect(refusal(() => keys.remove(ME, ["#comment"]))).toBe("invalid OpenSSH public key: '#comment'");
  expect(existsSync(join(home, ".ssh"))).toBe(false);
});

test("add creates ~/.ssh (0700) and authorized_keys (0600), appends new keys and never duplicates one", () => {
  keys.add(ME, ["algo key2 comments"], false);
  expect(contents()).toBe("algo key2 comments");
  expect(lstatSync(join(home, ".ssh")).mode & 0o777).toBe(0o700);
  expect(lstatSync(authorizedKeys()).mode & 0o777).toBe(0o600);
  keys.add(ME, ["algo key1 comments", "algo key2 comments"], false);
  expect(contents()).toBe("algo key2 comments\nalgo key1 comments");
  expect(readdirSync(join(home, ".ssh"))).toEqual(["authorized_keys"]);
});

test("add with reset replaces the file; reset with no keys empties it", () => {
  keys.add(ME, ["algo key1 comments", "algo key2 comments"], false);
  expect(contents()).toBe("algo key1 comments\nalgo key2 comments");
  keys.add(ME, ["algo key2 comments"], true);
  expect(contents()).toBe("algo key2 comments");
  keys.add(ME, [], true);
  expect(contents()).toBe("");
});

test("remove drops every copy of a key and keeps comments and other keys as they were", () => {
  const original = "algo key1 comments\nalgo key1 comments\n# a commented line\nalgo some-key another\n";
  setContents(original);
  keys.remove(ME, ["algo key2 comments"]);
  expect(contents()).toBe(original);
  keys.remove(ME, ["algo key1 comments", "algo key2 comments"]);
  expect(contents()).toBe("# a commented line\nalgo some-key another\n");
});

test("remove from a user without authorized_keys succeeds and creates nothing", () => {
  expect(keys.remove(ME, ["algo key1 comments"])).toEqual({});
  expect(existsSync(join(home, ".ssh"))).toBe(false);
});

test("get lists the keys without comments or blank lines, last first as qemu-ga does", () => {
  setContents("algo key1 comments\n# a commented line\n\n  algo some-key another  \n");
  expect(keys.get(ME)).toEqual({ keys: ["algo some-key another", "algo key1 comments"] });
});

test("get without authorized_keys names the file and the reason", () => {
  expect(refusal(() => keys.get(ME))).toBe(`failed to read '${authorizedKeys()}': Failed to open file \u201c${authorizedKeys()}\u201d: No such file or directory`);
});

test("a symlinked ~/.ssh or authorized_keys is never followed", () => {
  const elsewhere = mkdtempSync(join(tmpdir(), "kma-ssh-target-"));
  try {
    writeFileSync(join(elsewhere, "authorized_keys"), "secret line\n");
    symlinkSync(elsewhere, join(home, ".ssh"));
    expect(refusal(() => keys.add(ME, ["algo key"], false))).toContain("is a symbolic link, which is not followed");
    expect(refusal(() => keys.add(ME, ["algo key"], true))).toContain("is a symbolic link, which is not followed");
    expect(readFileSync(join(elsewhere, "authorized_keys"), "utf8")).toBe("secret line\n");
    expect(refusal(() => keys.get(ME))).toContain("Too many levels of symbolic links");
    rmSync(join(home, ".ssh"));
    mkdirSync(join(home, ".ssh"));
    symlinkSync(join(elsewhere, "authorized_keys"), authorizedKeys());
    expect(refusal(() => keys.get(ME))).toContain("Too many levels of symbolic links");
  } finally {
    rmSync(elsewhere, { recursive: true, force: true });
  }
});

test("lookupPasswd reads the system's users and knows no one by an empty or malformed name", () => {
  expect(lookupPasswd("root")).toMatchObject({ uid: 0, gid: 0, home: "/root" });
  expect(lookupPasswd("")).toBeNull();
  expect(lookupPasswd("root:x")).toBeNull();
  expect(lookupPasswd("kma-no-such-user")).toBeNull();
});

test("the native protocol's reasons: an unknown user and a missing file are not found, a bad key is invalid input", () => {
  const caught = (run: () => unknown) => {
    try {
      run();
    } catch (error) {
      return error as GuestError;
    }
    throw new Error("expected a refusal");
  };
  expect(caught(() => keys.get("someone"))).toMatchObject({ reason: "not_found", message: "no such user 'someone'" });
  expect(caught(() => keys.get(ME))).toMatchObject({ reason: "not_found" });
  expect(caught(() => keys.add(ME, ["#comment"], false))).toMatchObject({ reason: "invalid", message: "invalid OpenSSH public key: '#comment'" });
});
