/**
 * copy_archive_to_guest: a .tar.gz unpacked into a staging directory next to
 * the destination (same filesystem), then swapped into place atomically
 * (renameat2 RENAME_EXCHANGE, or RENAME_NOREPLACE when the destination is new)
 * and the old tree removed. Unsafe entries refuse the whole archive before
 * anything changes; a failure at any point removes the staging directory.
 */
import { randomBytes } from "node:crypto";
import { closeSync, fchmodSync, fchownSync, promises as fsp, type Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { posix } from "node:path";
import { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { RpcError } from "../protocol/errors.ts";
import type { Result } from "../schema/methods.ts";
import { lstatAt, mkdirat, openat, renameat2, unlinkat } from "./at.ts";
import { errnoOf, exchangeAt, fsyncDir, fsyncFd, ignoreErrors, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY, osError, renameNoReplaceAt } from "./fsx.ts";
import { fdPath, type OpenedParent, type PathPolicy } from "./paths.ts";
import { TarFormatError, TarReader, type TarEntry } from "./tar.ts";

/** Entries (and metadata headers) per archive. */
export const MAX_ARCHIVE_ENTRIES = 100_000;
/** Refused entries listed in the error's data (the count is always exact). */
const MAX_LISTED_REFUSALS = 1000;
/** Header and padding bytes allowed on top of upload_max_bytes of content. */
const RAW_OVERHEAD_BYTES = 128 * 1024 * 1024;

export interface UnpackLimits {
  /** Total bytes of file content (the gzip-bomb bound). */
  maxBytes: number;
}

export interface Refusal {
  name: string;
  reason: string;
}

/** Where the archive comes from: an in-memory buffer or a staged file. */
export type ArchiveSource = { buffer: Uint8Array } | { file: string };

export async function unpackArchive(
  policy: PathPolicy,
  dirParam: string,
  source: ArchiveSource,
  limits: UnpackLimits,
): Promise<Result<"copy_archive_to_guest">> {
  const parent = await policy.openParent(dirParam.replace(/\/+$/, "") || dirParam);
  try {
    return await unpackBeside(parent, dirParam, source, limits);
  } finally {
    closeSync(parent.fd);
  }
}

/**
 * Everything relative to the parent's directory fd: the staging directory is
 * made with mkdirat, filled through its own fd's /proc/self/fd path (pinned to
 * that directory whatever happens to the names above it) and swapped in with
 * renameat2 on the parent fd.
 */
async function unpackBeside(parent: OpenedParent, dirParam: string, source: ArchiveSource, limits: UnpackLimits): Promise<Result<"copy_archive_to_guest">> {
  const dir = parent.path;
  let old: Stats | null;
  try {
    old = lstatAt(parent.fd, parent.name);
  } catch (error) {
    throw osError(error, "cannot stat the destination", dirParam);
  }
  if (old?.isSymbolicLink()) throw new RpcError("FORBIDDEN", `'${dirParam}' is a symlink; refusing to replace it`, { path: dirParam, reason: "symlink" });
  if (old && !old.isDirectory()) throw new RpcError("FORBIDDEN", `'${dirParam}' exists and is not a directory`, { path: dirParam, reason: "not_a_directory" });

  const stagingName = `.${parent.name.slice(0, 40)}.kma-stage-${randomBytes(8).toString("hex")}`;
  let stagingFd: number;
  try {
    mkdirat(parent.fd, stagingName, 0o700);
  } catch (error) {
    throw osError(error, "cannot create the staging directory", posix.join(parent.dir, stagingName));
  }
  try {
    stagingFd = openat(parent.fd, stagingName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (error) {
    await ignoreErrors(async () => unlinkat(parent.fd, stagingName, true));
    throw osError(error, "cannot create the staging directory", posix.join(parent.dir, stagingName));
  }
  const parentPath = pinnedPath(parent.fd) ?? parent.dir;
  const removeStaging = () => ignoreErrors(() => fsp.rm(posix.join(parentPath, stagingName), { recursive: true, force: true }));
  let swapped = false;
  try {
    const stats = await extractInto(pinnedPath(stagingFd) ?? posix.join(parent.dir, stagingName), source, limits);
    // The staging dir becomes the directory: give it the old one's owner and mode (new: root, 0755).
    if (old) fchownSync(stagingFd, old.uid, old.gid);
    fchmodSync(stagingFd, old ? old.mode & 0o7777 : 0o755);
    let replaced = false;
    if (old) {
      if (exchangeAt(parent.fd, stagingName, parent.name)) {
        replaced = true;
      } else {
        // No RENAME_EXCHANGE (old kernel or filesystem): two renames, with a short window without `dir`.
        const aside = `${stagingName}.old`;
        renameat2(parent.fd, parent.name, parent.fd, aside, 0);
        try {
          renameat2(parent.fd, stagingName, parent.fd, parent.name, 0);
        } catch (error) {
          await ignoreErrors(async () => renameat2(parent.fd, aside, parent.fd, parent.name, 0));
          throw error;
        }
        renameat2(parent.fd, aside, parent.fd, stagingName, 0);
        replaced = true;
      }
    } else {
      renameNoReplaceAt(parent.fd, stagingName, parent.name, true);
    }
    swapped = true;
    await fsyncFd(parent.fd);
    // After an exchange the staging name holds the old tree; without one it no longer exists.
    if (replaced) await fsp.rm(posix.join(parentPath, stagingName), { recursive: true, force: true });
    return { dir, files: stats.files, directories: stats.directories, bytes: stats.bytes, replaced };
  } catch (error) {
    if (error instanceof RpcError) throw error;
    if (errnoOf(error) === "EEXIST" || errnoOf(error) === "ENOTEMPTY") {
      throw new RpcError("OPERATION_FAILED", `'${dirParam}' appeared while the archive was unpacked; nothing changed`, { errno: errnoOf(error), path: dirParam });
    }
    throw osError(error, "cannot unpack the archive", dirParam);
  } finally {
    closeSync(stagingFd);
    if (!swapped) await removeStaging();
  }
}

/** /proc/self/fd/N: the directory `fd` is open on, whatever its names became; null without /proc. */
function pinnedPath(fd: number): string | null {
  return fdPath(fd) === null ? null : `/proc/self/fd/${fd}`;
}

/** Why an entry is refused, or null when it is safe; `parts` gets its normalised components. */
function refusalOf(entry: TarEntry, parts: string[]): string | null {
  switch (entry.type) {
    case "symlink":
      return `symlink (to '${entry.linkname}') not allowed`;
    case "hardlink":
      return `hardlink (to '${entry.linkname}') not allowed`;
    case "character-device":
    case "block-device":
      return "device nodes not allowed";
    case "fifo":
      return "FIFOs not allowed";
    case "unsupported":
      return `unsupported entry type '${entry.flag}'`;
  }
  if (entry.name.includes("\0")) return "NUL byte in the name";
  if (entry.name.startsWith("/")) return "absolute path";
  for (const part of entry.name.split("/")) {
    if (part === "..") return "'..' component escapes the directory";
    if (part !== "" && part !== ".") parts.push(part);
  }
  if (parts.length === 0 && entry.type === "file") return "empty file name";
  return null;
}

interface ExtractStats {
  files: number;
  directories: number;
  bytes: number;
}

async function extractInto(staging: string, source: ArchiveSource, limits: UnpackLimits): Promise<ExtractStats> {
  const bytesIn = "buffer" in source ? source.buffer.subarray(0, 2) : await firstBytes(source.file, 2);
  if (bytesIn.length < 2 || bytesIn[0] !== 0x1f || bytesIn[1] !== 0x8b) {
    throw new RpcError("INVALID_PARAMS", "The archive is not gzip-compressed (expected a .tar.gz)", { reason: "not_gzip" });
  }
  const input = "buffer" in source ? Readable.from([Buffer.from(source.buffer.buffer, source.buffer.byteOffset, source.buffer.byteLength)]) : (await fsp.open(source.file, "r")).createReadStream();
  const gunzip = createGunzip({ chunkSize: 64 * 1024 });
  input.on("error", (error) => gunzip.destroy(error));
  input.pipe(gunzip);

  const reader = new TarReader();
  const refused: Refusal[] = [];
  let refusedCount = 0;
  const stats: ExtractStats = { files: 0, directories: 0, bytes: 0 };
  const createdDirs = new Set<string>([""]);
  const dirModes = new Map<string, number>();
  let rawBytes = 0;
  const rawLimit = limits.maxBytes + RAW_OVERHEAD_BYTES;
  let declared = 0;
  let current: { handle: FileHandle; path: string; entry: TarEntry; written: number } | null = null;

  const tooLarge = () =>
    new RpcError("TOO_LARGE", `The archive unpacks to more than upload_max_bytes (${limits.maxBytes}); refused`, { limit: limits.maxBytes });

  const ensureDir = async (rel: string): Promise<void> => {
    if (createdDirs.has(rel)) return;
    await ensureDir(posix.dirname(rel) === "." ? "" : posix.dirname(rel));
    try {
      await fsp.mkdir(posix.join(staging, rel), { mode: 0o700 });
      stats.directories++;
    } catch (error) {
      if (errnoOf(error) !== "EEXIST") throw error;
      const stat = await fsp.lstat(posix.join(staging, rel));
      if (!stat.isDirectory()) throw new RpcError("INVALID_PARAMS", `Archive entry '${rel}' is both a file and a directory`, { reason: "conflict", name: rel });
    }
    createdDirs.add(rel);
  };

  const closeCurrent = async () => {
    if (!current) return;
    const { handle, entry, written } = current;
    current = null;
    try {
      if (written !== entry.size) throw new TarFormatError("an entry is shorter than its header says");
      await handle.chmod(entry.mode & 0o777); // No setuid/setgid/sticky from an archive.
      if (entry.mtime > 0) await handle.utimes(entry.mtime, entry.mtime);
      await handle.sync();
    } finally {
      await handle.close();
    }
  };

  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      rawBytes += chunk.length;
      if (rawBytes > rawLimit) throw tooLarge();
      for (const event of reader.feed(chunk)) {
        switch (event.kind) {
          case "entry": {
            const entry = event.entry;
            if (reader.headers > MAX_ARCHIVE_ENTRIES) {
              throw new RpcError("TOO_LARGE", `The archive has more than ${MAX_ARCHIVE_ENTRIES} entries`, { limit: MAX_ARCHIVE_ENTRIES });
            }
            declared += entry.size;
            if (declared > limits.maxBytes) throw tooLarge();
            const parts: string[] = [];
            const reason = refusalOf(entry, parts);
            if (reason) {
              refusedCount++;
              if (refused.length < MAX_LISTED_REFUSALS) refused.push({ name: entry.name, reason });
              break;
            }
            if (refusedCount > 0) break; // Refused already: only validate the rest.
            const rel = parts.join("/");
            if (entry.type === "directory") {
              await ensureDir(rel);
              if (rel !== "") dirModes.set(rel, entry.mode & 0o777);
              break;
            }
            await ensureDir(posix.dirname(rel) === "." ? "" : posix.dirname(rel));
            const path = posix.join(staging, rel);
            let handle: FileHandle;
            try {
              handle = await fsp.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
            } catch (error) {
              if (errnoOf(error) === "EEXIST") {
                const stat = await fsp.lstat(path);
                if (!stat.isFile()) throw new RpcError("INVALID_PARAMS", `Archive entry '${rel}' is both a file and a directory`, { reason: "conflict", name: rel });
                // A later entry of the same name wins, as with tar.
                await fsp.unlink(path);
                handle = await fsp.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
                stats.files--;
              } else throw error;
            }
            current = { handle, path, entry, written: 0 };
            stats.files++;
            break;
          }
          case "data": {
            if (!current) break; // A refused entry, or a non-file's declared size: skipped.
            const file = current;
            let at = 0;
            while (at < event.bytes.length) {
              const { bytesWritten } = await file.handle.write(event.bytes, at, event.bytes.length - at, file.written);
              at += bytesWritten;
              file.written += bytesWritten;
            }
            stats.bytes += event.bytes.length;
            break;
          }
          case "entry-end":
            await closeCurrent();
            break;
          case "end":
            break;
        }
      }
      if (reader.ended) break;
    }
    if (!reader.ended) reader.finish();
  } catch (error) {
    if (current) await ignoreErrors(() => (current as { handle: FileHandle } | null)!.handle.close());
    if (error instanceof TarFormatError) throw new RpcError("INVALID_PARAMS", `The archive is corrupt: ${error.message}`, { reason: "corrupt" });
    if (isZlibError(error)) throw new RpcError("INVALID_PARAMS", `The archive is corrupt: ${(error as Error).message}`, { reason: "corrupt" });
    throw error;
  } finally {
    gunzip.destroy();
    input.destroy();
  }
  if (refusedCount > 0) {
    throw new RpcError("FORBIDDEN", `The archive has ${refusedCount} refused entr${refusedCount === 1 ? "y" : "ies"}; nothing was unpacked`, {
      refused,
      refused_count: refusedCount,
    });
  }
  // Directory modes last (deepest first), so a read-only directory did not block its own content.
  for (const rel of [...dirModes.keys()].sort((a, b) => b.length - a.length)) {
    await fsp.chmod(posix.join(staging, rel), dirModes.get(rel)!);
  }
  for (const rel of createdDirs) {
    if (rel !== "" && !dirModes.has(rel)) await fsp.chmod(posix.join(staging, rel), 0o755);
  }
  await fsyncDir(staging);
  return stats;
}

async function firstBytes(path: string, count: number): Promise<Uint8Array> {
  const handle = await fsp.open(path, "r");
  try {
    const buffer = Buffer.alloc(count);
    const { bytesRead } = await handle.read(buffer, 0, count, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function isZlibError(error: unknown): boolean {
  const code = errnoOf(error) ?? "";
  return code.startsWith("Z_") || code.startsWith("ERR_ZLIB") || /zlib|incorrect header|invalid (block|distance|code|stored)|unexpected end of file/i.test(String((error as Error)?.message));
}
