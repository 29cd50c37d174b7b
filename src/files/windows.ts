/**
 * File copy on Windows: copy_to_guest and copy_from_guest under
 * allowed_file_paths, with Windows path rules. (The chunked uploads and
 * archives use Linux's directory-fd machinery and stay Linux-only.)
 *
 * Paths must be plain absolute drive paths (`C:\dir\file`, `/` accepted as a
 * separator), compared with the roots case-insensitively and component-wise
 * (C:\ProgramData\kvm-manager-agent\filesx is not under ...\files). Refused by
 * name, before any file system call: drive-relative paths (`C:foo`, relative
 * to that drive's current directory), `\\?\` and `\\.\` device paths
 * (they skip Win32 normalisation and reach raw devices), UNC paths (another
 * machine: credentials and timeouts), alternate data streams (`file.txt:s`,
 * hidden content), reserved device names in any directory and with any
 * extension (`CON`, `NUL.txt`, `COM1`, `LPT9` ...: they open the device, not
 * a file), names ending in a dot or space (Win32 strips them, so they alias
 * another name), the characters <>"|?* and control characters, and `..`.
 * Then the real path (symlinks, junctions and 8.3 short names resolved by
 * GetFinalPathNameByHandle through realpath.native) must stay under a root.
 * A write never follows a link at the last component, never writes a file
 * with more than one hard link in place, and is atomic: a temp file in the same
 * directory, flushed, then renamed over the target (MoveFileEx). `mode` does
 * not apply (NTFS has ACLs; a new file inherits its directory's).
 */
import { randomBytes, createHash } from "node:crypto";
import { openSync, promises as fsp, realpathSync, type Stats } from "node:fs";
import { win32 } from "node:path";
import type { AgentConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { base64Buffer } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { FileChunk, FileService } from "../services.ts";
import { maxChunkBytes } from "./file-service.ts";
import { osError, readChunk } from "./fsx.ts";
import { forbidden, outside, refuseHardlinked, type Opened } from "./paths.ts";

/** Win32's limits: a whole path in UTF-16 units (the long-path ceiling), one component. */
export const WINDOWS_PATH_MAX = 32_767;
export const WINDOWS_NAME_MAX = 255;

const RESERVED_NAME = /^(CON|PRN|AUX|NUL|COM[0-9¹²³]|LPT[0-9¹²³]|CONIN\$|CONOUT\$)$/i;
const INVALID_CHARACTER = /[<>"|?*\u0000-\u001f]/;

/** Realpath with GetFinalPathNameByHandle (the native one resolves junctions and 8.3 names); tests inject their own. */
export type RealPath = (path: string) => string;

/**
 * Lexical checks of a Windows path; returns it normalised (`C:\a\b`, drive
 * letter upper-case, empty and `.` components dropped). Throws FORBIDDEN or
 * INVALID_PARAMS naming what is wrong.
 */
export function windowsLexical(path: string): string {
  if (path.includes("\0")) throw forbidden(path, "the path contains a NUL byte", "nul_byte");
  if (/^[\\/]{2}[?.][\\/]/.test(path)) throw forbidden(path, "\\\\?\\ and \\\\.\\ device paths are not allowed", "device_path");
  if (/^[\\/]{2}/.test(path)) throw forbidden(path, "UNC paths (\\\\server\\share) are not allowed", "unc");
  if (/^[A-Za-z]:(?![\\/])/.test(path)) throw forbidden(path, "drive-relative paths (C:foo) are not allowed; write C:\\foo", "drive_relative");
  if (!/^[A-Za-z]:[\\/]/.test(path)) throw forbidden(path, "the path must be absolute, with a drive (C:\\...)", "relative");
  if (path.length >= WINDOWS_PATH_MAX) {
    throw new RpcError("INVALID_PARAMS", `Path '${path.slice(0, 64)}...' refused: the path is ${path.length} characters, above ${WINDOWS_PATH_MAX - 1}`, { reason: "too_long" });
  }
  const parts = path.slice(3).split(/[\\/]/).filter((part) => part !== "" && part !== ".");
  for (const part of parts) {
    if (part === "..") throw forbidden(path, "'..' components are not allowed", "dot_dot");
    if (part.length > WINDOWS_NAME_MAX) throw new RpcError("INVALID_PARAMS", `Path '${path.slice(0, 64)}...' refused: a component is ${part.length} characters, above ${WINDOWS_NAME_MAX}`, { reason: "too_long" });
    if (part.includes(":")) throw forbidden(path, `'${part}' names an alternate data stream; streams are not allowed`, "alternate_data_stream");
    if (INVALID_CHARACTER.test(part)) throw forbidden(path, `'${part}' contains a character Windows does not allow in names (<>"|?* or a control character)`, "invalid_name");
    if (/[. ]$/.test(part)) throw forbidden(path, `'${part}' ends in a dot or a space, which Windows strips (it would name another file)`, "trailing_dot_or_space");
    if (RESERVED_NAME.test(part.split(".")[0]!.trimEnd())) throw forbidden(path, `'${part}' is a reserved device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9), whatever its extension`, "reserved_name");
  }
  if (parts.length === 0) throw forbidden(path, "the path names a drive's root directory", "root");
  return `${path[0]!.toUpperCase()}:\\${parts.join("\\")}`;
}

export class WindowsPathPolicy {
  readonly roots: readonly string[];

  constructor(allowed: readonly string[], private readonly realpath: RealPath = realpathSync.native, logger?: Logger) {
    const roots: string[] = [];
    for (const root of allowed) {
      try {
        const real = this.realpath(root);
        if (!roots.some((seen) => seen.toLowerCase() === real.toLowerCase())) roots.push(real);
      } catch (error) {
        logger?.warn("allowed_file_paths entry is not usable; ignored", { path: root, error: String(error) });
      }
    }
    this.roots = roots;
  }

  /** A root or inside one, component-wise and case-insensitively. */
  isUnder(real: string): boolean {
    const path = real.toLowerCase();
    return this.roots.some((root) => {
      const base = root.toLowerCase().replace(/\\+$/, "");
      return path === base || path.startsWith(`${base}\\`);
    });
  }

  /** The real path of an existing `path`, which must stay under a root. */
  resolveExisting(path: string): string {
    const normal = windowsLexical(path);
    const real = this.realpath(normal);
    if (!this.isUnder(real)) throw outside(path);
    return real;
  }

  /** The real path a new or replaced file `path` would have: its parent resolved (and created, if asked) under a root. */
  async resolveForWrite(path: string, createDirs: boolean): Promise<{ dir: string; name: string; target: string }> {
    if (/[\\/]$/.test(path)) throw new RpcError("INVALID_PARAMS", `'${path}' names a directory, not a file`, { path });
    const normal = windowsLexical(path);
    const name = win32.basename(normal);
    let dir = win32.dirname(normal);
    const missing: string[] = [];
    // The deepest existing ancestor decides: a path outside the roots is FORBIDDEN whether or not it exists.
    for (;;) {
      try {
        dir = this.realpath(dir);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT" || win32.dirname(dir) === dir) throw osError(error, "cannot resolve the parent directory", dir);
        missing.unshift(win32.basename(dir));
        dir = win32.dirname(dir);
      }
    }
    if (!this.isUnder(dir)) throw outside(path);
    if (missing.length > 0) {
      if (!createDirs) throw new RpcError("NOT_FOUND", `the parent directory of '${path}' does not exist (create_dirs creates it)`, { path, errno: "ENOENT" });
      for (const part of missing) {
        dir = win32.join(dir, part);
        await fsp.mkdir(dir).catch((error) => {
          if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
        });
        dir = this.realpath(dir);
        if (!this.isUnder(dir)) throw outside(path);
      }
    }
    return { dir, name, target: win32.join(dir, name) };
  }

  /**
   * PathPolicy.open's contract on Windows (for guest-file-open): an existing
   * file's real path under a root, or — for a mode that creates — the parent
   * resolved under a root and no link followed at the last component.
   */
  async open(path: string, flags: number, mode: number, followFinal: boolean): Promise<Opened> {
    let real: string;
    if (followFinal) {
      real = this.resolveExisting(path);
    } else {
      real = (await this.resolveForWrite(path, false)).target;
      const existing = await fsp.lstat(real).catch(() => null);
      if (existing?.isSymbolicLink()) throw forbidden(path, "it is a symbolic link or junction; writes never follow one", "symlink");
    }
    return { fd: openSync(real, flags, mode), path: real };
  }
}

const NOT_SUPPORTED = "is not supported on Windows guests yet";

export class WindowsFileManager implements FileService {
  readonly policy: WindowsPathPolicy;
  readonly chunkBytes: number;

  constructor(
    private readonly config: AgentConfig,
    private readonly logger: Logger,
    realpath: RealPath = realpathSync.native,
  ) {
    this.policy = new WindowsPathPolicy(config.security.allowed_file_paths, realpath, logger);
    this.chunkBytes = maxChunkBytes(config.limits.max_frame_bytes, config.limits.copy_chunk_bytes);
  }

  async copyTo(params: Params<"copy_to_guest">): Promise<Result<"copy_to_guest">> {
    const content = base64Buffer(params.content_base64);
    const limit = this.config.limits.upload_max_bytes;
    if (content.length > limit) throw new RpcError("TOO_LARGE", `The file is above upload_max_bytes (${limit})`, { limit });
    const { dir, name, target } = await this.policy.resolveForWrite(params.path, params.create_dirs);
    let existing: Stats | null = null;
    try {
      existing = await fsp.lstat(target);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw osError(error, `cannot write '${params.path}'`, params.path);
    }
    if (existing) {
      if (existing.isSymbolicLink()) throw forbidden(params.path, "it is a symbolic link or junction; writes never follow one", "symlink");
      if (!existing.isFile()) throw new RpcError("OPERATION_FAILED", `'${params.path}' is not a regular file`, { path: params.path });
      if (!params.overwrite) throw new RpcError("FORBIDDEN", `'${params.path}' exists and overwrite is false`, { path: params.path, reason: "exists" });
    }
    const temp = win32.join(dir, `.${name}.${randomBytes(6).toString("hex")}.kma-tmp`);
    try {
      const handle = await fsp.open(temp, "wx");
      try {
        await handle.writeFile(content);
        await handle.sync();
      } finally {
        await handle.close();
      }
      if (params.overwrite) {
        await fsp.rename(temp, target); // MoveFileEx(MOVEFILE_REPLACE_EXISTING)
      } else {
        // A hard link fails if the name appeared since the check above: no overwrite even in a race.
        await fsp.link(temp, target).catch((error) => {
          if ((error as NodeJS.ErrnoException).code === "EEXIST") throw new RpcError("FORBIDDEN", `'${params.path}' exists and overwrite is false`, { path: params.path, reason: "exists" });
          throw error;
        });
        await fsp.rm(temp, { force: true });
      }
    } catch (error) {
      await fsp.rm(temp, { force: true }).catch(() => {});
      throw osError(error, `cannot write '${params.path}'`, params.path);
    }
    this.logger.info("file written", { path: target, bytes: content.length });
    return { path: target, bytes: content.length, sha256: createHash("sha256").update(content).digest("hex") };
  }

  async copyFrom(params: Params<"copy_from_guest">): Promise<FileChunk> {
    const length = params.length ?? this.chunkBytes;
    if (length > this.chunkBytes) {
      throw new RpcError("TOO_LARGE", `length ${length} is above the largest chunk (${this.chunkBytes} bytes); read in chunks`, { limit: this.chunkBytes });
    }
    let real: string;
    try {
      real = this.policy.resolveExisting(params.path);
    } catch (error) {
      throw osError(error, `cannot read '${params.path}'`, params.path);
    }
    let handle: fsp.FileHandle;
    try {
      handle = await fsp.open(real, "r");
    } catch (error) {
      throw osError(error, `cannot read '${params.path}'`, params.path);
    }
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new RpcError("OPERATION_FAILED", `'${params.path}' is not a regular file`, { path: params.path });
      refuseHardlinked(params.path, stat);
      const want = Math.max(0, Math.min(length, stat.size - params.offset));
      return await readChunk(handle, Buffer.alloc(want), params.offset, want, stat.size);
    } catch (error) {
      throw osError(error, `cannot read '${params.path}'`, params.path);
    } finally {
      await handle.close();
    }
  }

  uploadStart(): never {
    throw unsupported("upload_start");
  }
  uploadChunk(): never {
    throw unsupported("upload_chunk");
  }
  uploadCommit(): never {
    throw unsupported("upload_commit");
  }
  uploadAbort(): never {
    throw unsupported("upload_abort");
  }
  unpackArchive(): never {
    throw unsupported("copy_archive_to_guest");
  }
  close(): void {}
}

/** The dispatcher answers these before they get here (LINUX_ONLY); kept for the interface. */
function unsupported(method: string): RpcError {
  return new RpcError("UNSUPPORTED_OS", `Method '${method}' ${NOT_SUPPORTED}`, { method, os: "windows" });
}
