/**
 * The file service: copy_to_guest / copy_from_guest, chunked uploads and
 * copy_archive_to_guest, confined to allowed_file_paths (see paths.ts).
 *
 * Writes are atomic: a temp file (O_CREAT|O_EXCL|O_NOFOLLOW) in the target's
 * directory, written, fsync'ed, renamed over the target, directory fsync'ed —
 * all relative to the parent's directory fd, opened under the root once
 * (paths.ts), so a parent swapped for a symlink meanwhile changes nothing.
 * Every error path removes the temp file. Uploads stream to their temp file
 * chunk by chunk with an incremental SHA-256, so memory stays bounded by one
 * chunk whatever the file size.
 */
import { edenGC } from "bun:jsc";
import { createHash, randomBytes, type Hash } from "node:crypto";
import { closeSync, fstatSync, promises as fsp, type Stats } from "node:fs";
import { tmpdir } from "node:os";
import { posix } from "node:path";
import type { AgentConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { base64Buffer, base64DecodedLength, takeBase64Bytes } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { FileChunk, FileService } from "../services.ts";
import { unpackArchive } from "./archive.ts";
import { AT_FDCWD, lstatAt, openat, renameat2, unlinkat } from "./at.ts";
import { errnoOf, FdHandle, fsyncFd, ignoreErrors, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_WRONLY, osError, readChunk, renameNoReplaceAt } from "./fsx.ts";
import { PathPolicy, refuseHardlinked } from "./paths.ts";
import { BufferPool } from "../runtime/buffer-pool.ts";

/** Bytes kept free in a frame for the JSON envelope around a base64 payload. */
export const FRAME_HEADROOM_BYTES = 1024;

/**
 * The largest raw chunk whose base64 form, plus the JSON envelope, fits in a
 * frame of `maxFrameBytes`; never above `copyChunkBytes`.
 */
export function maxChunkBytes(maxFrameBytes: number, copyChunkBytes: number): number {
  const base64Room = Math.max(0, maxFrameBytes - FRAME_HEADROOM_BYTES);
  return Math.max(1, Math.min(copyChunkBytes, Math.floor(base64Room / 4) * 3));
}

const DEFAULT_FILE_MODE = 0o644;
const STAGED_ARCHIVE = "archive.tar.gz";

/**
 * An uploaded chunk's base64 reaches the handler already decoded into a kept
 * buffer (a Base64Bytes: see protocol/parse-frame.ts), and the frame is in
 * a kept buffer too, so a chunk leaves only small, young garbage: an eden
 * collection after every UPLOAD_GC_EVERY_BYTES frees it (1 GiB push here:
 * 94-100 MiB peak, against 108 with none). While each chunk's 2.8 MB string
 * was made, strings outlived eden collections and only a full one every
 * 16 MiB kept the peak near 110 MiB; in the TCG guest those full collections
 * took a tenth of an upload's time, and without the string the peak is the
 * same without them.
 * A read leaves only young garbage too (its buffer is kept, its reply encoded
 * in a kept frame from 48 KiB base64 strings, see response-frames.ts): an
 * eden collection every READ_GC_EVERY_BYTES is enough there and costs nothing
 * measurable, where a full one halved read throughput. Without it a 1 GiB
 * pull peaked at 135-160 MiB, with it near 100.
 */
const UPLOAD_GC_EVERY_BYTES = 4 * 1024 * 1024;
const READ_GC_EVERY_BYTES = 8 * 1024 * 1024;

/**
 * Chunk-sized buffers kept for what copy_from_guest reads and what
 * upload_chunk decodes, each taken until its reply is encoded or its chunk
 * written. Two, as the client pipelines two chunks; they stay resident.
 */
const CHUNK_BUFFERS_KEPT = 2;

interface WriteTarget {
  /** The parent directory, opened under the root; closed by releaseTarget. */
  dirFd: number;
  dirClosed?: boolean;
  /** Real parent directory. */
  dir: string;
  name: string;
  /** Real path of the destination. */
  path: string;
  /** Final mode; an overwritten file keeps its own. */
  mode: number;
  /** Owner to keep, when replacing an existing file. */
  owner: { uid: number; gid: number } | null;
  overwrite: boolean;
}

interface TempFile {
  handle: FdHandle;
  /** The directory fd the temp file's name is relative to (AT_FDCWD for a staged archive). */
  dirFd: number;
  name: string;
  /** Set once the handle is closed, so cleanup never closes it twice. */
  closed?: boolean;
}

interface Upload {
  id: string;
  /** null: an archive staged in `stageDir` for copy_archive_to_guest. */
  target: WriteTarget | null;
  stageDir: string | null;
  temp: TempFile;
  received: number;
  hash: Hash;
  /** Set by a successful commit of an archive upload. */
  committed: boolean;
  timer: ReturnType<typeof setTimeout> | null;
  /** Operations run one at a time per upload, so pipelined chunks keep their order. */
  queue: Promise<unknown>;
  busy: number;
}

export class FileManager implements FileService {
  readonly policy: PathPolicy;
  readonly chunkBytes: number;
  private readonly uploads = new Map<string, Upload>();
  private uploadedSinceGc = 0;
  private readSinceGc = 0;
  private readonly chunkBuffers = new BufferPool(CHUNK_BUFFERS_KEPT);

  /** `policyOptions` lets tests force the realpath fallback (see PathPolicy). */
  constructor(
    private readonly config: AgentConfig,
    private readonly logger: Logger,
    policyOptions: { openat2?: boolean } = {},
  ) {
    this.policy = new PathPolicy(config.security.allowed_file_paths, logger, policyOptions);
    this.chunkBytes = maxChunkBytes(config.limits.max_frame_bytes, config.limits.copy_chunk_bytes);
  }

  // ------------------------------------------------------------ copy_to_guest / copy_from_guest

  async copyTo(params: Params<"copy_to_guest">): Promise<Result<"copy_to_guest">> {
    const content = base64Buffer(params.content_base64);
    if (content.length > this.config.limits.upload_max_bytes) throw this.uploadTooLarge();
    const target = await this.prepareWrite(params.path, params);
    try {
      const temp = this.openTemp(target);
      try {
        await writeAll(temp.handle, content, 0);
        await this.finishWrite(target, temp);
      } catch (error) {
        await discardTemp(temp);
        throw osError(error, `cannot write '${params.path}'`, params.path);
      }
    } finally {
      releaseTarget(target);
    }
    const sha256 = createHash("sha256").update(content).digest("hex");
    this.logger.info("file written", { path: target.path, bytes: content.length });
    return { path: target.path, bytes: content.length, sha256 };
  }

  async copyFrom(params: Params<"copy_from_guest">): Promise<FileChunk> {
    const length = params.length ?? this.chunkBytes;
    if (length > this.chunkBytes) {
      throw new RpcError("TOO_LARGE", `length ${length} is above the largest chunk (${this.chunkBytes} bytes); read in chunks`, { limit: this.chunkBytes });
    }
    // O_NONBLOCK: a FIFO cannot make open() hang; fstat below refuses it.
    const handle = new FdHandle((await this.policy.open(params.path, O_RDONLY | O_NONBLOCK, 0, true)).fd);
    try {
      // fstat and close of a regular file never wait on the disk: called in place, not through the
      // thread pool (each round trip there costs about 0.5 ms in a TCG guest).
      const stat = fstatSync(handle.fd);
      if (!stat.isFile()) throw notRegular(params.path, stat);
      refuseHardlinked(params.path, stat);
      const size = stat.size;
      const want = Math.max(0, Math.min(length, size - params.offset));
      const buffer = this.chunkBuffers.take(want);
      const giveBack = () => this.chunkBuffers.giveBack(buffer);
      try {
        // The reply encoder gives the buffer back once the chunk is in its frame.
        const chunk = await readChunk(handle, buffer, params.offset, want, size, giveBack);
        this.collectAfterRead(chunk.bytes);
        return chunk;
      } catch (error) {
        giveBack();
        throw error;
      }
    } catch (error) {
      throw osError(error, `cannot read '${params.path}'`, params.path);
    } finally {
      closeSync(handle.fd);
    }
  }

  // ------------------------------------------------------------ uploads

  async uploadStart(params: Params<"upload_start">): Promise<Result<"upload_start">> {
    if (params.archive && params.path !== undefined) throw new RpcError("INVALID_PARAMS", "Invalid params: give either path or archive: true, not both");
    if (!params.archive && params.path === undefined) throw new RpcError("INVALID_PARAMS", "Invalid params: path is required (or archive: true)");
    if (this.uploads.size >= this.config.limits.upload_max_open) {
      throw new RpcError("TOO_LARGE", `Too many open uploads (upload_max_open = ${this.config.limits.upload_max_open}); commit or abort one first`, {
        limit: this.config.limits.upload_max_open,
      });
    }
    let target: WriteTarget | null = null;
    let stageDir: string | null = null;
    let temp: TempFile;
    if (params.path !== undefined) {
      target = await this.prepareWrite(params.path, params);
      try {
        temp = this.openTemp(target);
      } catch (error) {
        releaseTarget(target);
        throw error;
      }
    } else {
      // A private (0700) directory outside the destination: the archive is only data until unpacked.
      try {
        stageDir = await fsp.mkdtemp(posix.join(tmpdir(), "kma-upload-"));
        const name = posix.join(stageDir, STAGED_ARCHIVE);
        temp = { dirFd: AT_FDCWD, name, handle: new FdHandle(openat(AT_FDCWD, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)) };
      } catch (error) {
        if (stageDir) await ignoreErrors(() => fsp.rm(stageDir!, { recursive: true, force: true }));
        throw osError(error, "cannot stage the archive upload");
      }
    }
    // Checked again: another start may have finished while this one awaited.
    if (this.uploads.size >= this.config.limits.upload_max_open) {
      await this.removeStaged({ target, temp, stageDir });
      throw new RpcError("TOO_LARGE", `Too many open uploads (upload_max_open = ${this.config.limits.upload_max_open})`, {
        limit: this.config.limits.upload_max_open,
      });
    }
    const id = randomBytes(16).toString("hex");
    const upload: Upload = { id, target, stageDir, temp, received: 0, hash: createHash("sha256"), committed: false, timer: null, queue: Promise.resolve(), busy: 0 };
    this.uploads.set(id, upload);
    this.armIdleTimer(upload);
    this.logger.info("upload started", { upload_id: id, path: target?.path ?? null, archive: params.archive });
    return { upload_id: id, chunk_bytes: this.chunkBytes };
  }

  uploadChunk(params: Params<"upload_chunk">): Promise<Result<"upload_chunk">> {
    const { upload_id, offset, content_base64 } = params;
    const length = base64DecodedLength(content_base64);
    if (length > this.chunkBytes) {
      return Promise.reject(new RpcError("TOO_LARGE", `Chunk of ${length} bytes is above chunk_bytes (${this.chunkBytes})`, { limit: this.chunkBytes }));
    }
    // Decoded now (if the frame's parser did not already), into a kept buffer, before waiting for the upload's
    // earlier chunks: only the bytes wait, and a request's multi-MB string is garbage at once.
    const { bytes, release } = takeBase64Bytes(content_base64, this.chunkBuffers);
    const written = this.withUpload(upload_id, async (upload) => {
      if (upload.committed) throw new RpcError("INVALID_PARAMS", `Upload '${upload.id}' is already committed`, { upload_id: upload.id });
      if (offset !== upload.received) {
        throw new RpcError("INVALID_PARAMS", `Invalid params: offset ${offset} is not the expected offset ${upload.received}`, {
          expected_offset: upload.received,
        });
      }
      if (upload.received + length > this.config.limits.upload_max_bytes) {
        await this.drop(upload, "too large");
        throw this.uploadTooLarge(" (the upload was dropped)");
      }
      // All open uploads together may not fill the guest's disk: this chunk waits for others to finish.
      const staging = this.config.limits.upload_staging_max_bytes;
      const staged = [...this.uploads.values()].reduce((sum, open) => sum + open.received, 0);
      if (staged + length > staging) {
        throw new RpcError(
          "TOO_LARGE",
          `Open uploads hold ${staged} bytes; this chunk would pass upload_staging_max_bytes (${staging}). It was not written; the upload goes on: send it again once other uploads are committed or aborted`,
          { limit: staging, staged },
        );
      }
      try {
        await writeAll(upload.temp.handle, bytes, upload.received);
      } catch (error) {
        await this.drop(upload, "write failed");
        throw osError(error, "cannot write the upload (the upload was dropped)", upload.target?.path);
      }
      upload.hash.update(bytes);
      upload.received += length;
      this.collectAfterUpload(length);
      return { upload_id: upload.id, received_bytes: upload.received };
    });
    return written.finally(release);
  }

  uploadCommit(params: Params<"upload_commit">): Promise<Result<"upload_commit">> {
    return this.withUpload(params.upload_id, async (upload) => {
      if (upload.committed) throw new RpcError("INVALID_PARAMS", `Upload '${upload.id}' is already committed`, { upload_id: upload.id });
      const actual = upload.hash.digest("hex");
      if (actual !== params.sha256) {
        await this.drop(upload, "sha256 mismatch");
        throw new RpcError("OPERATION_FAILED", "SHA-256 mismatch: the upload was dropped and nothing was written", {
          reason: "sha256_mismatch",
          expected: params.sha256,
          actual,
          bytes: upload.received,
        });
      }
      if (!upload.target) {
        // An archive: closed and kept for copy_archive_to_guest, still under the idle timer.
        try {
          await closeTemp(upload.temp);
        } catch (error) {
          await this.drop(upload, "close failed");
          throw osError(error, "cannot finish the archive upload");
        }
        upload.committed = true;
        return { upload_id: upload.id, path: null, bytes: upload.received, sha256: actual };
      }
      this.forget(upload);
      try {
        await this.finishWrite(upload.target, upload.temp);
      } catch (error) {
        await discardTemp(upload.temp);
        throw osError(error, `cannot write '${upload.target.path}'`, upload.target.path);
      } finally {
        releaseTarget(upload.target);
      }
      this.logger.info("upload committed", { upload_id: upload.id, path: upload.target.path, bytes: upload.received });
      return { upload_id: upload.id, path: upload.target.path, bytes: upload.received, sha256: actual };
    });
  }

  uploadAbort(params: Params<"upload_abort">): Promise<Result<"upload_abort">> {
    return this.withUpload(params.upload_id, async (upload) => {
      await this.drop(upload, "aborted");
      return { upload_id: upload.id, aborted: true as const };
    });
  }

  // ------------------------------------------------------------ copy_archive_to_guest

  async unpackArchive(params: Params<"copy_archive_to_guest">): Promise<Result<"copy_archive_to_guest">> {
    const hasBase64 = params.archive_base64 !== undefined;
    const hasUpload = params.upload_id !== undefined;
    if (hasBase64 === hasUpload) throw new RpcError("INVALID_PARAMS", "Invalid params: give exactly one of archive_base64 and upload_id");
    const limits = { maxBytes: this.config.limits.upload_max_bytes };
    if (hasBase64) {
      return unpackArchive(this.policy, params.dir, { buffer: base64Buffer(params.archive_base64!) }, limits);
    }
    return this.withUpload(params.upload_id!, async (upload) => {
      if (upload.target || !upload.committed) {
        throw new RpcError("INVALID_PARAMS", `Upload '${upload.id}' is not a committed archive upload (upload_start with archive: true, then upload_commit)`, {
          upload_id: upload.id,
        });
      }
      // Consumed by this call, whatever its outcome.
      try {
        return await unpackArchive(this.policy, params.dir, { file: upload.temp.name }, limits);
      } finally {
        await this.drop(upload, "consumed");
      }
    });
  }

  /** Abort every upload (agent shutdown, tests). */
  async close(): Promise<void> {
    await Promise.all([...this.uploads.values()].map((upload) => this.drop(upload, "closed")));
  }

  /** Open uploads, for tests and diagnostics. */
  get openUploads(): number {
    return this.uploads.size;
  }

  // ------------------------------------------------------------ internals

  private collectAfterUpload(bytes: number): void {
    this.uploadedSinceGc += bytes;
    if (this.uploadedSinceGc < UPLOAD_GC_EVERY_BYTES) return;
    this.uploadedSinceGc = 0;
    edenGC();
  }

  private collectAfterRead(bytes: number): void {
    this.readSinceGc += bytes;
    if (this.readSinceGc < READ_GC_EVERY_BYTES) return;
    this.readSinceGc = 0;
    edenGC();
  }

  private uploadTooLarge(suffix = ""): RpcError {
    const limit = this.config.limits.upload_max_bytes;
    return new RpcError("TOO_LARGE", `The file is above upload_max_bytes (${limit})${suffix}`, { limit });
  }

  private async prepareWrite(
    path: string,
    options: { mode?: number; create_dirs: boolean; overwrite: boolean },
  ): Promise<WriteTarget> {
    const parent = await this.policy.openParent(path, options.create_dirs);
    let existing: Stats | null;
    try {
      existing = lstatAt(parent.fd, parent.name);
      if (existing) {
        if (existing.isSymbolicLink()) throw new RpcError("FORBIDDEN", `'${path}' is a symlink; writes never follow one`, { path, reason: "symlink" });
        if (!existing.isFile()) throw notRegular(path, existing);
        if (!options.overwrite) throw new RpcError("FORBIDDEN", `'${path}' exists and overwrite is false`, { path, reason: "exists" });
      }
    } catch (error) {
      closeSync(parent.fd);
      throw osError(error, `cannot stat '${path}'`, path);
    }
    return {
      dirFd: parent.fd,
      dir: parent.dir,
      name: parent.name,
      path: parent.path,
      mode: existing ? existing.mode & 0o7777 : (options.mode ?? DEFAULT_FILE_MODE),
      owner: existing ? { uid: existing.uid, gid: existing.gid } : null,
      overwrite: options.overwrite,
    };
  }

  private openTemp(target: WriteTarget): TempFile {
    for (let attempt = 0; ; attempt++) {
      const name = `.${target.name.slice(0, 40)}.kma-${randomBytes(8).toString("hex")}.tmp`;
      try {
        return { dirFd: target.dirFd, name, handle: new FdHandle(openat(target.dirFd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)) };
      } catch (error) {
        if (errnoOf(error) === "EEXIST" && attempt < 5) continue;
        throw osError(error, `cannot create a temp file next to '${target.path}'`, target.path);
      }
    }
  }

  /** fsync, owner and mode, rename over the target (or refuse an existing one), fsync the directory. */
  private async finishWrite(target: WriteTarget, temp: TempFile): Promise<void> {
    await temp.handle.sync();
    if (target.owner) await temp.handle.chown(target.owner.uid, target.owner.gid); // Before chmod: chown clears setuid.
    await temp.handle.chmod(target.mode);
    await closeTemp(temp);
    if (target.overwrite) {
      renameat2(target.dirFd, temp.name, target.dirFd, target.name, 0);
    } else {
      try {
        renameNoReplaceAt(target.dirFd, temp.name, target.name, false);
      } catch (error) {
        if (errnoOf(error) === "EEXIST") {
          throw new RpcError("FORBIDDEN", `'${target.path}' exists and overwrite is false`, { path: target.path, reason: "exists" });
        }
        throw error;
      }
    }
    await fsyncFd(target.dirFd);
  }

  private withUpload<T>(id: string, work: (upload: Upload) => Promise<T>): Promise<T> {
    const upload = this.uploads.get(id);
    if (!upload) return Promise.reject(new RpcError("NOT_FOUND", `No upload '${id}' (never started, finished, aborted or expired)`, { upload_id: id }));
    upload.busy++;
    const run = upload.queue.then(async () => {
      try {
        if (this.uploads.get(id) !== upload) throw new RpcError("NOT_FOUND", `No upload '${id}' (finished, aborted or expired)`, { upload_id: id });
        return await work(upload);
      } finally {
        upload.busy--;
        if (this.uploads.get(id) === upload) this.armIdleTimer(upload);
      }
    });
    upload.queue = run.catch(() => {});
    return run;
  }

  private armIdleTimer(upload: Upload): void {
    if (upload.timer) clearTimeout(upload.timer);
    const ms = this.config.limits.upload_idle_timeout_seconds * 1000;
    upload.timer = setTimeout(() => {
      upload.timer = null;
      if (this.uploads.get(upload.id) !== upload) return;
      if (upload.busy > 0) return this.armIdleTimer(upload); // Re-armed when the running call ends anyway.
      this.logger.warn("upload idle too long; dropped", { upload_id: upload.id, path: upload.target?.path ?? null, received_bytes: upload.received });
      void this.drop(upload, "idle timeout");
    }, ms);
    upload.timer.unref?.();
  }

  private forget(upload: Upload): void {
    if (upload.timer) clearTimeout(upload.timer);
    upload.timer = null;
    if (this.uploads.get(upload.id) === upload) this.uploads.delete(upload.id);
  }

  private async drop(upload: Upload, why: string): Promise<void> {
    this.forget(upload);
    await this.removeStaged(upload);
    this.logger.debug("upload dropped", { upload_id: upload.id, reason: why });
  }

  private async removeStaged(upload: { target: WriteTarget | null; temp: TempFile; stageDir: string | null }): Promise<void> {
    await discardTemp(upload.temp);
    if (upload.target) releaseTarget(upload.target);
    const stageDir = upload.stageDir;
    if (stageDir) await ignoreErrors(() => fsp.rm(stageDir, { recursive: true, force: true }));
  }
}

async function writeAll(handle: FdHandle, bytes: Uint8Array, position: number): Promise<void> {
  let at = 0;
  while (at < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, at, bytes.length - at, position + at);
    at += bytesWritten;
  }
}

async function closeTemp(temp: TempFile): Promise<void> {
  if (temp.closed) return;
  temp.closed = true;
  await temp.handle.close();
}

/** Close (if still open) and unlink a temp file; never throws. */
async function discardTemp(temp: TempFile): Promise<void> {
  await ignoreErrors(() => closeTemp(temp));
  await ignoreErrors(async () => unlinkat(temp.dirFd, temp.name));
}

function releaseTarget(target: WriteTarget): void {
  if (target.dirClosed) return;
  target.dirClosed = true;
  closeSync(target.dirFd);
}

function notRegular(path: string, stat: Stats): RpcError {
  const type = stat.isDirectory()
    ? "directory"
    : stat.isFIFO()
      ? "FIFO"
      : stat.isSocket()
        ? "socket"
        : stat.isCharacterDevice()
          ? "character device"
          : stat.isBlockDevice()
            ? "block device"
            : stat.isSymbolicLink()
              ? "symlink"
              : "special file";
  return new RpcError("FORBIDDEN", `'${path}' is a ${type}; only regular files are read or written`, { path, reason: "not_regular_file", type });
}
