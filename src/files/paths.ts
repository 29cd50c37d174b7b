/**
 * Path policy: every path the file service touches is absolute, free of `..`
 * and NUL, and resolves (all symlinks followed) to a place under one of the
 * allowed roots, themselves realpath'ed once at start-up. The check is on path
 * components, never on string prefixes: /tmpx is not under /tmp.
 */
import { realpathSync, promises as fsp, type Stats } from "node:fs";
import { posix } from "node:path";
import type { Logger } from "../log/logger.ts";
import { RpcError } from "../protocol/errors.ts";
import { errnoOf, osError } from "./fsx.ts";

export interface ResolvedParent {
  /** Real path of the parent directory (under a root). */
  dir: string;
  /** Final component, as given. */
  name: string;
  /** dir + "/" + name. */
  path: string;
}

export class PathPolicy {
  readonly roots: readonly string[];

  constructor(allowed: readonly string[], logger?: Logger) {
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
    const parts = path.split("/").filter((part) => part !== "" && part !== ".");
    if (parts.includes("..")) throw forbidden(path, "'..' components are not allowed", "dot_dot");
    if (parts.length === 0) throw forbidden(path, "the path names the root directory", "root");
    return `/${parts.join("/")}`;
  }

  /**
   * Resolve the parent directory of `path` (which must be a file or directory
   * name, not a root): realpath of the parent, checked under a root. Missing
   * parents are NOT_FOUND unless `createDirs`, then created one by one (0755),
   * each checked to stay under the root. The deepest existing ancestor is
   * checked first, so a path outside the roots is FORBIDDEN whether or not it exists.
   */
  async resolveParent(path: string, createDirs = false): Promise<ResolvedParent> {
    if (path.endsWith("/")) throw new RpcError("INVALID_PARAMS", `'${path}' names a directory, not a file`, { path });
    const normal = this.lexical(path);
    const name = posix.basename(normal);
    const parent = posix.dirname(normal);
    let dir: string;
    try {
      dir = await fsp.realpath(parent);
    } catch (error) {
      if (errnoOf(error) !== "ENOENT") throw osError(error, "cannot resolve the parent directory", parent);
      dir = await this.missingParent(path, parent, createDirs);
    }
    if (!this.isUnder(dir)) throw outside(path);
    const stat = await fsp.stat(dir).catch((error) => {
      throw osError(error, "cannot stat the parent directory", parent);
    });
    if (!stat.isDirectory()) throw new RpcError("OPERATION_FAILED", `the parent of '${path}' is not a directory`, { errno: "ENOTDIR", path });
    return { dir, name, path: dir === "/" ? `/${name}` : `${dir}/${name}` };
  }

  /**
   * Resolve an existing object for reading: the parent as above, then a
   * symlink at the final component is followed and its target checked too.
   */
  async resolveExisting(path: string): Promise<{ path: string; stat: Stats }> {
    const parent = await this.resolveParent(path);
    let target = parent.path;
    let stat: Stats;
    try {
      stat = await fsp.lstat(target);
      if (stat.isSymbolicLink()) {
        target = await fsp.realpath(target);
        if (!this.isUnder(target)) throw outside(path);
        stat = await fsp.lstat(target);
      }
    } catch (error) {
      throw osError(error, `cannot open '${path}'`, path);
    }
    return { path: target, stat };
  }

  /**
   * Defence in depth against a directory swapped for a symlink between our
   * checks and open(): where the fd really points, per /proc/self/fd.
   */
  async checkFd(fd: number, path: string): Promise<void> {
    let real: string;
    try {
      real = await fsp.readlink(`/proc/self/fd/${fd}`);
    } catch {
      return; // No /proc: the path checks above are all we have.
    }
    if (!real.startsWith("/") || !this.isUnder(real.replace(/ \(deleted\)$/, ""))) throw outside(path);
  }

  private async missingParent(path: string, parent: string, createDirs: boolean): Promise<string> {
    // Find the deepest existing ancestor; it decides FORBIDDEN before NOT_FOUND.
    const parts = parent.split("/").filter(Boolean);
    let existing = parts.length;
    let real = "/";
    for (; existing >= 0; existing--) {
      try {
        real = await fsp.realpath(`/${parts.slice(0, existing).join("/")}`);
        break;
      } catch (error) {
        if (errnoOf(error) !== "ENOENT") throw osError(error, "cannot resolve the parent directory", parent);
      }
    }
    if (!this.isUnder(real)) throw outside(path);
    if (!createDirs) {
      throw new RpcError("NOT_FOUND", `the parent directory of '${path}' does not exist (create_dirs creates it)`, { path, errno: "ENOENT" });
    }
    for (const part of parts.slice(existing)) {
      const next = real === "/" ? `/${part}` : `${real}/${part}`;
      try {
        await fsp.mkdir(next, { mode: 0o755 });
        await fsp.chmod(next, 0o755); // Not left to the umask.
      } catch (error) {
        if (errnoOf(error) !== "EEXIST") throw osError(error, "cannot create a parent directory", next);
      }
      real = await fsp.realpath(next).catch((error) => {
        throw osError(error, "cannot resolve a created directory", next);
      });
      if (!this.isUnder(real)) throw outside(path);
    }
    return real;
  }
}

function forbidden(path: string, message: string, reason: string): RpcError {
  return new RpcError("FORBIDDEN", `Path '${printable(path)}' refused: ${message}`, { path: printable(path), reason });
}

function outside(path: string): RpcError {
  return forbidden(path, "it is outside allowed_file_paths", "outside_allowed_paths");
}

function printable(path: string): string {
  return path.replaceAll("\0", "\\0");
}
