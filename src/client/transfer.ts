/**
 * Whole-file transfers on top of AgentClient: pushFile (copy_to_guest for
 * small files, upload_start/chunk/commit for the rest) and pullFile
 * (copy_from_guest in chunks). Both stream: memory holds a few chunks, never
 * the file, and both compute SHA-256 as the bytes pass.
 */
import { createHash, randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { base64DecodedLength, decodeBase64Into } from "../protocol/base64.ts";
import { AgentRpcError, type AgentClient } from "./client.ts";

export interface TransferProgress {
  /** Bytes moved so far. */
  bytes: number;
  /** Expected total (the file's size when the transfer began). */
  total: number;
  elapsedMs: number;
}

export interface TransferResult {
  /** Guest path (as the agent resolved it) for a push, local path for a pull. */
  path: string;
  bytes: number;
  sha256: string;
  elapsedMs: number;
  /** Which methods moved the bytes. */
  via: "copy_to_guest" | "upload" | "copy_from_guest";
}

export interface PushOptions {
  onProgress?: (progress: TransferProgress) => void;
  /** Mode of a new file: 0o644 or "0644". */
  mode?: number | string;
  createDirs?: boolean;
  overwrite?: boolean;
  /** Chunk size for upload_chunk (default 2 MiB); capped at what the agent announces. */
  chunkBytes?: number;
  /**
   * Files up to this size go in one copy_to_guest; larger ones in upload_* chunks.
   * Default: whatever fits a 16 KiB request frame (about 12 KiB of content), so
   * one call suffices against any agent whose max_frame_bytes is 16 KiB or more; a
   * larger single copy would fail with -32004 against an agent with smaller frames.
   */
  smallFileBytes?: number;
  /** Chunks in flight at once (default 2: the next chunk travels while the agent writes one). */
  pipeline?: number;
  /** Timeout of upload_commit, which fsyncs the whole file (default 10 minutes). */
  commitTimeoutMs?: number;
}

export interface PullOptions {
  onProgress?: (progress: TransferProgress) => void;
  /** Bytes per copy_from_guest (default 2 MiB, lowered to the agent's ceiling when that is smaller). */
  chunkBytes?: number;
  /** Mode of the local file (default 0o644). */
  mode?: number;
  /** Requests in flight at once (default 2). */
  pipeline?: number;
}

/** Request frames up to this size go in one copy_to_guest by default. */
const SMALL_REQUEST_FRAME_BYTES = 16 * 1024;
/** The JSON-RPC envelope and options around the path and the content. */
const REQUEST_OVERHEAD_BYTES = 256;

function defaultSmallFileBytes(guestPath: string): number {
  const room = SMALL_REQUEST_FRAME_BYTES - REQUEST_OVERHEAD_BYTES - Buffer.byteLength(JSON.stringify(guestPath));
  return Math.max(0, Math.floor(room / 4) * 3);
}
const DEFAULT_COMMIT_TIMEOUT_MS = 10 * 60 * 1000;
const TOO_LARGE = -32004;
/**
 * Default chunk: the agent accepts up to its chunk_bytes (8 MiB by default),
 * but 2 MiB chunks move as fast and keep the agent's resident memory far
 * lower (each chunk exists in several copies until the GC runs).
 */
export const DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024;
/** Chunks in flight at once: the next one travels while the agent handles the current one. */
export const DEFAULT_PIPELINE = 2;

export async function pushFile(client: AgentClient, localPath: string, guestPath: string, options: PushOptions = {}): Promise<TransferResult> {
  const started = performance.now();
  const handle = await fsp.open(localPath, "r");
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new Error(`${localPath} is not a regular file`);
    const total = stat.size;
    const progress = (bytes: number) => options.onProgress?.({ bytes, total, elapsedMs: performance.now() - started });
    const writeOptions = {
      ...(options.mode !== undefined ? { mode: options.mode } : {}),
      create_dirs: options.createDirs ?? false,
      overwrite: options.overwrite ?? true,
    };

    const smallFileBytes = options.smallFileBytes ?? defaultSmallFileBytes(guestPath);
    if (total <= smallFileBytes) {
      const content = await readAll(handle, total);
      if (content.length <= smallFileBytes) {
        try {
          const result = await client.copyToGuest({ path: guestPath, content_base64: content.toString("base64"), ...writeOptions }, undefined);
          progress(result.bytes);
          return { path: result.path, bytes: result.bytes, sha256: result.sha256, elapsedMs: performance.now() - started, via: "copy_to_guest" };
        } catch (error) {
          // Above upload_max_bytes or similar: chunks will say so precisely.
          if (!(error instanceof AgentRpcError && error.code === TOO_LARGE)) throw error;
        }
      }
    }

    const start = await client.uploadStart({ path: guestPath, ...writeOptions }, undefined);
    const id = start.upload_id;
    const chunkBytes = Math.max(1, Math.min(options.chunkBytes ?? DEFAULT_CHUNK_BYTES, start.chunk_bytes));
    const depth = Math.max(1, options.pipeline ?? DEFAULT_PIPELINE);
    const hash = createHash("sha256");
    const inFlight: Promise<unknown>[] = [];
    let offset = 0;
    try {
      for (;;) {
        const buffer = Buffer.allocUnsafe(chunkBytes);
        const { bytesRead } = await handle.read(buffer, 0, chunkBytes, offset);
        if (bytesRead === 0) break;
        const chunk = buffer.subarray(0, bytesRead);
        hash.update(chunk);
        const at = offset;
        offset += bytesRead;
        const sent = client.uploadChunk({ upload_id: id, offset: at, content_base64: chunk.toString("base64") }, undefined).then((r) => progress(r.received_bytes));
        sent.catch(() => {}); // Awaited below; never an unhandled rejection meanwhile.
        inFlight.push(sent);
        if (inFlight.length >= depth) await inFlight.shift();
      }
      await Promise.all(inFlight);
      const sha256 = hash.digest("hex");
      const result = await client.uploadCommit({ upload_id: id, sha256 }, { timeoutMs: options.commitTimeoutMs ?? DEFAULT_COMMIT_TIMEOUT_MS });
      return { path: result.path ?? guestPath, bytes: result.bytes, sha256: result.sha256, elapsedMs: performance.now() - started, via: "upload" };
    } catch (error) {
      await Promise.allSettled(inFlight);
      await client.uploadAbort({ upload_id: id }, undefined).catch(() => {}); // Already gone after a failed commit.
      throw error;
    }
  } finally {
    await handle.close();
  }
}

export async function pullFile(client: AgentClient, guestPath: string, localPath: string, options: PullOptions = {}): Promise<TransferResult> {
  const started = performance.now();
  const temp = join(dirname(localPath), `.${basename(localPath).slice(0, 40)}.kma-${randomBytes(6).toString("hex")}.part`);
  const handle = await fsp.open(temp, "wx", options.mode ?? 0o644);
  let closed = false;
  try {
    const hash = createHash("sha256");
    let length = Math.max(1, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    const request = (offset: number) => {
      const reply = client.copyFromGuest({ path: guestPath, offset, length }, undefined);
      reply.catch(() => {});
      return { offset, reply };
    };
    const depth = Math.max(1, options.pipeline ?? DEFAULT_PIPELINE);
    // The first reply tells the size; after it, `depth` requests run ahead.
    let first = request(0);
    try {
      await first.reply;
    } catch (error) {
      // Above the agent's ceiling (small max_frame_bytes): read at its limit instead.
      const limit = (error as AgentRpcError).data as { limit?: unknown } | undefined;
      if (!(error instanceof AgentRpcError && error.code === TOO_LARGE && typeof limit?.limit === "number" && limit.limit < length)) throw error;
      length = limit.limit;
      first = request(0);
    }
    const queue = [first];
    let offset = 0;
    const chunk = length;
    let total = 0;
    // Each chunk is decoded into this buffer, written out and hashed before the next one is decoded.
    let decoded = Buffer.allocUnsafe(chunk);
    /** The chunk's bytes; null when its base64 is broken, which counts as corrupted. */
    const decodeChunk = (base64: string): Uint8Array | null => {
      const needed = Math.ceil(base64DecodedLength(base64));
      if (needed > decoded.length) decoded = Buffer.allocUnsafe(needed);
      try {
        return decodeBase64Into(base64, decoded);
      } catch {
        return null;
      }
    };
    for (;;) {
      const next = queue.shift()!;
      const result = await next.reply;
      if (next.offset !== offset) throw new Error(`internal: reply for offset ${next.offset}, expected ${offset}`);
      const bytes = decodeChunk(result.content_base64);
      if (!bytes || bytes.length !== result.bytes || createHash("sha256").update(bytes).digest("hex") !== result.sha256) {
        throw new Error(`chunk at offset ${offset} of ${guestPath} arrived corrupted (size or sha256 mismatch)`);
      }
      let at = 0;
      while (at < bytes.length) at += (await handle.write(bytes, at, bytes.length - at, offset + at)).bytesWritten;
      hash.update(bytes);
      offset += bytes.length;
      total = result.size;
      options.onProgress?.({ bytes: offset, total, elapsedMs: performance.now() - started });
      if (result.eof) break;
      if (bytes.length === 0) throw new Error(`no progress reading ${guestPath} at offset ${offset}`);
      // Keep `depth` requests ahead (a request past the end gets an empty eof reply, ignored).
      let ahead = queue.length > 0 ? queue[queue.length - 1]!.offset + chunk : offset;
      if (queue.length > 0 && bytes.length !== chunk) {
        // A short chunk without eof (the file grew or shrank): restart the read-ahead here.
        await Promise.allSettled(queue.map((q) => q.reply));
        queue.length = 0;
        ahead = offset;
      }
      while (queue.length < depth && (ahead < total || queue.length === 0)) {
        queue.push(request(ahead));
        ahead += chunk;
      }
    }
    await Promise.allSettled(queue.map((q) => q.reply));
    await handle.sync();
    await handle.close();
    closed = true;
    await fsp.rename(temp, localPath);
    return { path: localPath, bytes: offset, sha256: hash.digest("hex"), elapsedMs: performance.now() - started, via: "copy_from_guest" };
  } catch (error) {
    if (!closed) await handle.close().catch(() => {});
    await fsp.unlink(temp).catch(() => {});
    throw error;
  }
}

async function readAll(handle: FileHandle, size: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const buffer = Buffer.allocUnsafe(Math.max(size - offset, 0) + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
    if (bytesRead === 0) break;
    chunks.push(buffer.subarray(0, bytesRead));
    offset += bytesRead;
    if (offset > size) break; // Grew while we read: the caller sees the length and switches to chunks.
  }
  return Buffer.concat(chunks);
}
