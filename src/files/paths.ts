/**
 * Path policy: every path the file service touches is absolute, free of `..`
 * and NUL, within PATH_MAX / NAME_MAX, and resolves (all symlinks followed) to
 * a place under one of the allowed roots, themselves realpath'ed once at
 * start-up. The check is on path components, never on string prefixes: /tmpx
 * is not under /tmp.
 *
 * Opens are race-free where the kernel has openat2 (Linux 5.6+): the root is
 * opened (O_PATH, no symlink anywhere in it) and the kernel resolves the rest
 * beneath it (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so a directory swapped
 * for a symlink between a check and the open cannot lead outside: the open
 * itself fails with EXDEV. RESOLVE_BENEATH also refuses absolute symlinks
 * that stay inside the root; for those the real path is checked and opened
 * beneath the root again by its real, symlink-free relative path. Without
 * openat2 (ENOSYS, or EPERM from a seccomp filter) the fallback is realpath
 * checks, O_NOFOLLOW and the opened fd re-checked through /proc/self/fd.
 * Either way the parent of a write is opened as a directory fd and everything
 * after (temp file, rename, created directories) is relative to that fd.
 */
import { closeSync, fchmodSync, openSync, readlinkSync, realpathSync, promises as fsp, type Stats } from "node:fs";
import { posix } from "node:path";
import type { Logger } from "../log/logger.ts";
import { RpcError } from "../protocol/errors.ts";
import { AT_FDCWD, hasOpenat2, mkdirat, O_PATH, openat, openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS } from "./at.ts";
import { errnoOf, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_RDONLY, osError } from "./fsx.ts";

/** Linux limits: a whole path (with its NUL) and one component. */
export const PATH_MAX = 4096;
export const NAME_MAX = 255;

const DIRECTORY_FLAGS = O_RDONLY | O_DIRECTORY;

/** An object opened under a root: its fd and real path. */
export interface Opened {
  fd: number;
  path: string;
}

/** The parent directory of a path, opened (O_RDONLY | O_DIRECTORY) under a root; the caller closes `fd`. */
export interface OpenedParent {
  fd: number;
  /** Real path of the parent directory. */
  dir: string;
  /** Final component, as given. */
  name: string;
  /** dir + "/" + name. */
  path: string;
}

export class PathPolicy {
  readonly roots: readonly string[];
  /** How opens are confined: openat2 beneath the root, or the realpath fallback (see above). */
  readonly resolver: "openat2" | "realpath";

  /** `openat2: false` forces the fallback (tests run both). */
  constructor(allowed: readonly string[], logger?: Logger, options: { openat2?: boolean } = {}) {
    const roots: string[] = [];
    for (const root of allowed) {
      try {
        const real = realpathSync(root);
        if (!roots.includes(real)) roots.push(real);
      } catch (error) {
        logger?.warn("allowed_file_paths entry is not usable; ignored", { path: root, errno: errnoOf(error) ?? String(error) });
      }
    }
    this.roots = roots;
    this.resolver = options.openat2 !== false && hasOpenat2() ? "openat2" : "realpath";
    if (options.openat2 !== false && this.resolver === "realpath") {
      logger?.warn("openat2 is not available (Linux < 5.6, or refused by a seccomp filter): file paths are confined by realpath checks and fd re-checks");
    }
  }

  /** True when the real path `real` is a root or inside one (component-wise). */
  isUnder(real: string): boolean {
    return this.roots.some((root) => root === "/" || real === root || real.startsWith(`${root}/`));
  }

  /** Strictly inside a root (not a root itself): what may be created, replaced or swapped. */
  isInside(real: string): boolean {
    return this.roots.some((root) => real !== root && (root === "/" || real.startsWith(`${root}/`)));
  }

  /**
   * Lexical checks: absolute, no NUL, no `..` component, names something below `/`.
   * Returns the path with empty and `.` components dropped.
   */
  lexical(path: string): string {
    if (path.includes("\0")) throw forbidden(path, "the path contains a NUL byte", "nul_byte");
    if (!path.startsWith("/")) throw forbidden(path, "the path must be absolute", "relative");
    if (Buffer.byteLength(path) >= PATH_MAX) throw tooLong(path, `the path is ${Buffer.byteLength(path)} bytes, above PATH_MAX (${PATH_MAX - 1})`);
    const parts = path.split("/").filter((part) => part !== "" && part !== ".");
    const long = parts.find((part) => Buffer.byteLength(part) > NAME_MAX);
    if (long !== undefined) throw tooLong(path, `a component is ${Buffer.byteLength(long)} bytes, above NAME_MAX (${NAME_MAX})`);
    if (parts.includes("..")) throw forbidden(path, "'..' components are not allowed", "dot_dot");
    if (parts.length === 0) throw forbidden(path, "the path names the root directory", "root");
    return `/${parts.join("/")}`;
  }

  /**
   * Open `path` under its root. A symlink at the last component is followed
   * (its target checked too) when `followFinal`, else refused (O_NOFOLLOW:
   * ELOOP). OS errors come back as RpcErrors (osError).
   */
  async open(path: string, flags: number, mode: number, followFinal: boolean): Promise<Opened> {
    const normal = this.lexical(path);
    try {
      return await this.openNormal(path, normal, flags, mode, followFinal);
    } catch (error) {
      throw osError(error, `cannot open '${path}'`, path);
    }
  }

  /**
   * Open the parent directory of `path` (a file or directory name, not a
   * root) under its root, every symlink in it followed. Missing parents are
   * NOT_FOUND unless `createDirs`, then made one by one (0755) with mkdirat
   * in the directory opened before, each opened with O_NOFOLLOW. The deepest
   * existing ancestor is checked first, so a path outside the roots is
   * FORBIDDEN whether or not it exists.
   */
  async openParent(path: string, createDirs = false): Promise<OpenedParent> {
    if (path.endsWith("/")) throw new RpcError("INVALID_PARAMS", `'${path}' names a directory, not a file`, { path });
    const normal = this.lexical(path);
    const name = posix.basename(normal);
    const parent = posix.dirname(normal);
    let dir: Opened;
    try {
      dir = await this.openNormal(path, parent, DIRECTORY_FLAGS, 0, true);
    } catch (error) {
      if (errnoOf(error) === "ENOTDIR") throw new RpcError("OPERATION_FAILED", `the parent of '${path}' is not a directory`, { errno: "ENOTDIR", path });
      if (errnoOf(error) !== "ENOENT") throw osError(error, "cannot open the parent directory", parent);
      dir = await this.createParents(path, parent, createDirs);
    }
    return { fd: dir.fd, dir: dir.path, name, path: dir.path === "/" ? `/${name}` : `${dir.path}/${name}` };
  }

  /** The widest root `real` is under (the fewest EXDEV retries), or null. */
  private rootOf(real: string): string | null {
    let best: string | null = null;
    for (const root of this.roots) {
      if ((root === "/" || real === root || real.startsWith(`${root}/`)) && (best === null || root.length < best.length)) best = root;
    }
    return best;
  }

  /** Raw errors (ErrnoExceptions) and policy RpcErrors; `open` maps them. */
  private async openNormal(path: string, normal: string, flags: number, mode: number, followFinal: boolean): Promise<Opened> {
    const openFlags = flags | O_CLOEXEC | (followFinal ? 0 : O_NOFOLLOW);
    if (this.resolver === "realpath") {
      const target = await this.realTarget(path, normal, followFinal);
      if (this.roots.includes(target)) return { fd: this.openChecked(path, target, openFlags, mode), path: target };
      // The directory first, checked where it really is; then the name in it: what O_CREAT makes cannot land outside.
      const dirFd = this.openChecked(path, posix.dirname(target), DIRECTORY_FLAGS | O_CLOEXEC, 0);
      try {
        return { fd: openat(dirFd, posix.basename(target), openFlags | O_NOFOLLOW, mode), path: target };
      } finally {
        closeSync(dirFd);
      }
    }
    const lexicalRoot = this.rootOf(normal);
    if (lexicalRoot !== null) {
      try {
        return openBeneath(lexicalRoot, normal, openFlags, mode);
      } catch (error) {
        if (errnoOf(error) !== "EXDEV") throw error;
      }
    }
    // An absolute symlink (inside the root or not), a root reached through a
    // symlink, /proc/self/root/...: the real path decides, then is opened
    // beneath its root by its symlink-free relative path.
    const real = await this.realTarget(path, normal, followFinal);
    try {
      return openBeneath(this.rootOf(real)!, real, openFlags, mode);
    } catch (error) {
      if (errnoOf(error) === "EXDEV") throw outside(path); // Changed under us, towards the outside.
      throw error;
    }
  }

  /** The real path `normal` names, checked under a root; the last component followed only when `followFinal`. */
  private async realTarget(path: string, normal: string, followFinal: boolean): Promise<string> {
    if (followFinal) {
      try {
        const real = await fsp.realpath(normal);
        if (!this.isUnder(real)) throw outside(path);
        return real;
      } catch (error) {
        if (errnoOf(error) !== "ENOENT") throw error;
        // Missing, or a dangling symlink: the parent decides, and the open says which.
      }
    }
    const name = posix.basename(normal);
    let dir: string;
    try {
      dir = await fsp.realpath(posix.dirname(normal));
    } catch (error) {
      if (errnoOf(error) !== "ENOENT") throw error;
      await this.deepestAncestor(path, posix.dirname(normal));
      throw error;
    }
    if (!this.isUnder(dir)) throw outside(path);
    return dir === "/" ? `/${name}` : `${dir}/${name}`;
  }

  /**
   * Fallback only (openat2 makes it moot): open `real` without following a
   * final symlink, then check where the fd really points, per /proc/self/fd,
   * against a directory swapped for a symlink after the checks.
   */
  private openChecked(path: string, real: string, flags: number, mode: number): number {
    const fd = openSync(real, flags | O_NOFOLLOW, mode);
    const where = fdPath(fd);
    if (where !== null && !this.isUnder(where.replace(/ \(deleted\)$/, ""))) {
      closeSync(fd);
      throw outside(path);
    }
    return fd;
  }

  /** The deepest existing ancestor of `parent`, checked under a root (FORBIDDEN before NOT_FOUND), and the components below it. */
  private async deepestAncestor(path: string, parent: string): Promise<{ real: string; missing: string[] }> {
    const parts = parent.split("/").filter(Boolean);
    for (let existing = parts.length; existing >= 0; existing--) {
      let real: string;
      try {
        real = await fsp.realpath(`/${parts.slice(0, existing).join("/")}`);
      } catch (error) {
        if (errnoOf(error) !== "ENOENT") throw osError(error, "cannot resolve the parent directory", parent);
        continue;
      }
      if (!this.isUnder(real)) throw outside(path);
      return { real, missing: parts.slice(existing) };
    }
    throw outside(path); // Not even / exists.
  }

  private async createParents(path: string, parent: string, createDirs: boolean): Promise<Opened> {
    const { real, missing } = await this.deepestAncestor(path, parent);
    if (!createDirs) throw missingParent(path);
    let dir: Opened;
    try {
      dir = await this.openNormal(path, real, DIRECTORY_FLAGS, 0, true);
    } catch (error) {
      throw osError(error, "cannot open the parent directory", real);
    }
    for (const part of missing) {
      const next = dir.path === "/" ? `/${part}` : `${dir.path}/${part}`;
      try {
        let created = true;
        try {
          mkdirat(dir.fd, part, 0o755);
        } catch (error) {
          if (errnoOf(error) !== "EEXIST") throw error;
          created = false;
        }
        const fd = openat(dir.fd, part, DIRECTORY_FLAGS | O_NOFOLLOW);
        if (created) fchmodSync(fd, 0o755); // Not left to the umask.
        closeSync(dir.fd);
        dir = { fd, path: next };
      } catch (error) {
        closeSync(dir.fd);
        throw osError(error, "cannot create a parent directory", next);
      }
    }
    return dir;
  }
}

/** Where an fd really points (its /proc/self/fd link), or null without /proc. */
export function fdPath(fd: number): string | null {
  try {
    const real = readlinkSync(`/proc/self/fd/${fd}`);
    return real.startsWith("/") ? real : null;
  } catch {
    return null;
  }
}

/**
 * `normal` (a real or lexical path under `root`) opened with openat2 beneath
 * the root's O_PATH fd: no `..`, absolute or magic link may leave it (EXDEV / ELOOP).
 */
function openBeneath(root: string, normal: string, flags: number, mode: number): Opened {
  const rootFd = openat2(AT_FDCWD, root, O_PATH | O_DIRECTORY, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  try {
    const relative = normal === root ? "." : normal.slice(root === "/" ? 1 : root.length + 1);
    const fd = openat2(rootFd, relative, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
    return { fd, path: fdPath(fd) ?? normal };
  } finally {
    closeSync(rootFd);
  }
}

/**
 * Hardlink rule: a regular file with more than one link may be a second name
 * of a file outside the roots (a hardlink needs no access to the directory it
 * points into), so it is never read or written in place. Atomic writes
 * (copy_to_guest, uploads) replace the name, not the file, and are allowed.
 */
export function refuseHardlinked(path: string, stat: Stats): void {
  if (stat.isFile() && stat.nlink > 1) {
    throw forbidden(path, `it has ${stat.nlink} hard links; a file with more than one is never read or written in place`, "hardlink");
  }
}

function missingParent(path: string): RpcError {
  return new RpcError("NOT_FOUND", `the parent directory of '${path}' does not exist (create_dirs creates it)`, { path, errno: "ENOENT" });
}

function tooLong(path: string, message: string): RpcError {
  return new RpcError("INVALID_PARAMS", `Path '${printable(path).slice(0, 64)}...' refused: ${message}`, { reason: "too_long", errno: "ENAMETOOLONG" });
}

export function forbidden(path: string, message: string, reason: string): RpcError {
  return new RpcError("FORBIDDEN", `Path '${printable(path)}' refused: ${message}`, { path: printable(path), reason });
}

export function outside(path: string): RpcError {
  return forbidden(path, "it is outside allowed_file_paths", "outside_allowed_paths");
}

function printable(path: string): string {
  return path.replaceAll("\0", "\\0");
}
