/**
 * A user's ~/.ssh/authorized_keys (guest-ssh-*-authorized-keys and the native ssh_*_authorized_keys)
 * edited as qemu-ga edits it (qga/commands-posix-ssh.c) — lines split on
 * "\n" and joined back without a trailing newline, keys never duplicated,
 * get listing the non-comment lines last-first — so KubeVirt's and
 * OpenStack's key propagation sees the same file and the same answers.
 *
 * Safer than qemu-ga where a user could turn root's write against the
 * system: ~/.ssh must be a real directory (a symlink is refused, not
 * followed), authorized_keys is read without following a symlink, and the
 * new file is written beside it, owned by the user and mode 0600 before it
 * is renamed over the old one — never half-written, never root-owned.
 */
import { closeSync, constants, fchmodSync, fchownSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { errnoOf } from "../files/fsx.ts";
import { findTool } from "../power/power.ts";
import { failed, GuestError, strerror } from "./errors.ts";

export interface PasswdEntry {
  uid: number;
  gid: number;
  home: string;
}

/** /etc/passwd first; then getent, for users that come from LDAP or sssd. */
export function lookupPasswd(username: string): PasswdEntry | null {
  const fromLine = (line: string) => {
    const [name, , uid, gid, , home] = line.split(":");
    return name === username && home !== undefined ? { uid: Number(uid), gid: Number(gid), home } : null;
  };
  if (username === "" || username.includes(":") || username.includes("\n")) return null;
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const entry = fromLine(line);
      if (entry) return entry;
    }
  } catch {
    // No /etc/passwd: getent may still know the user.
  }
  const getentPath = findTool("getent");
  if (!getentPath) return null;
  const getent = Bun.spawnSync([getentPath, "passwd", "--", username], { stdout: "pipe", stderr: "ignore" });
  return getent.exitCode === 0 ? fromLine(getent.stdout.toString().trim()) : null;
}

export class SshKeys {
  constructor(private readonly lookup: (username: string) => PasswdEntry | null = lookupPasswd) {}

  get(username: string): { keys: string[] } {
    const user = this.user(username);
    const lines = readAuthorizedKeys(keysPath(user));
    const keys = lines.map((line) => line.trim()).filter((line) => line !== "" && !line.startsWith("#"));
    return { keys: keys.reverse() }; // qemu-ga prepends each key to its list
  }

  add(username: string, keys: string[], reset: boolean): Record<string, never> {
    checkKeys(keys);
    const user = this.user(username);
    const sshDir = join(user.home, ".ssh");
    let lines: string[] | null = null;
    if (!reset) {
      try {
        lines = readAuthorizedKeys(keysPath(user));
      } catch {
        lines = null; // as qemu-ga: an unreadable file is started afresh
      }
    }
    if (lines === null) ensureSshDir(sshDir, user);
    const merged = lines ?? [];
    for (const key of keys) if (!merged.includes(key)) merged.push(key);
    writeAuthorizedKeys(sshDir, merged, user);
    return {};
  }

  remove(username: string, keys: string[]): Record<string, never> {
    checkKeys(keys);
    const user = this.user(username);
    const path = keysPath(user);
    if (!exists(path)) return {};
    const lines = readAuthorizedKeys(path);
    writeAuthorizedKeys(join(user.home, ".ssh"), lines.filter((line) => !keys.includes(line)), user);
    return {};
  }

  private user(username: string): PasswdEntry {
    const user = this.lookup(username);
    // qemu-ga's words, errno and all: glib leaves errno 0 for a user that does not exist.
    if (!user) throw new GuestError("not_found", `failed to lookup user '${username}': Success`, `no such user '${username}'`);
    return user;
  }
}

const keysPath = (user: PasswdEntry) => join(user.home, ".ssh", "authorized_keys");

function checkKeys(keys: string[]): void {
  for (const key of keys) {
    if (key.startsWith("#") || key.includes("\n")) throw new GuestError("invalid", `invalid OpenSSH public key: '${key}'`);
  }
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * ~/.ssh opened without following a symlink; the files in it are then reached
 * through /proc/self/fd, so a user who swaps ~/.ssh for a symlink after the
 * check cannot send root's reads, writes or chowns anywhere else.
 */
function openSshDir(sshDir: string): number {
  try {
    return openSync(sshDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    // With O_DIRECTORY the kernel reports a symlink as ENOTDIR; name it for what it is.
    if (errnoOf(error) === "ENOTDIR" && lstatSync(sshDir, { throwIfNoEntry: false })?.isSymbolicLink()) throw Object.assign(new Error(`${sshDir} is a symlink`), { code: "ELOOP" });
    throw error;
  }
}

const inside = (dirFd: number, name: string) => `/proc/self/fd/${dirFd}/${name}`;

function readAuthorizedKeys(path: string): string[] {
  let dirFd: number | null = null;
  let fd: number;
  try {
    dirFd = openSshDir(dirname(path));
    fd = openSync(inside(dirFd, "authorized_keys"), constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    const desc = `failed to read '${path}': Failed to open file \u201c${path}\u201d: ${strerror(error)}`;
    throw errnoOf(error) === "ENOENT" ? new GuestError("not_found", desc) : failed(desc);
  } finally {
    if (dirFd !== null) closeSync(dirFd);
  }
  try {
    return readFileSync(fd, "utf8").split("\n");
  } catch (error) {
    throw failed(`failed to read '${path}': Failed to read from file \u201c${path}\u201d: ${strerror(error)}`);
  } finally {
    closeSync(fd);
  }
}

function ensureSshDir(path: string, user: PasswdEntry): void {
  try {
    const stat = lstatSync(path);
    if (stat.isDirectory()) return;
    throw failed(`failed to create directory '${path}': ${stat.isSymbolicLink() ? "it is a symbolic link, which is not followed" : "File exists"}`);
  } catch (error) {
    if (errnoOf(error) !== "ENOENT") throw error;
  }
  try {
    mkdirSync(path, { mode: 0o700 });
  } catch (error) {
    throw failed(`failed to create directory '${path}': ${strerror(error)}`);
  }
  let dirFd: number;
  try {
    dirFd = openSshDir(path);
  } catch (error) {
    throw failed(`failed to create directory '${path}': ${strerror(error)}`);
  }
  try {
    try {
      fchownSync(dirFd, user.uid, user.gid);
    } catch (error) {
      throw failed(`failed to set ownership of directory '${path}': ${strerror(error)}`);
    }
    try {
      fchmodSync(dirFd, 0o700);
    } catch (error) {
      throw failed(`failed to set permissions of directory '${path}': ${strerror(error)}`);
    }
  } finally {
    closeSync(dirFd);
  }
}

function writeAuthorizedKeys(sshDir: string, lines: string[], user: PasswdEntry): void {
  const path = join(sshDir, "authorized_keys");
  let dirFd: number;
  try {
    dirFd = openSshDir(sshDir);
  } catch (error) {
    if (errnoOf(error) === "ELOOP") throw failed(`failed to write to '${path}': '${sshDir}' is a symbolic link, which is not followed`);
    throw failed(`failed to write to '${path}': ${strerror(error)}`);
  }
  const temporary = inside(dirFd, `.authorized_keys.${process.pid}.${crypto.randomUUID()}`);
  let fd: number | null = null;
  try {
    fd = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    writeFileSync(fd, lines.join("\n"));
    fchownSync(fd, user.uid, user.gid);
    fchmodSync(fd, 0o600);
    closeSync(fd);
    fd = null;
    renameSync(temporary, inside(dirFd, "authorized_keys"));
  } catch (error) {
    if (fd !== null) closeSync(fd);
    rmSync(temporary, { force: true });
    throw failed(`failed to write to '${path}': ${strerror(error)}`);
  } finally {
    closeSync(dirFd);
  }
}
