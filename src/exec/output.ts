/**
 * Bounded capture of one output stream: passes on (for streaming) the first
 * `limit` bytes, keeps for the result the first `keepLimit` of them, counts
 * and drops the rest (the pipe is still drained, so the child never blocks).
 */
export class OutputCapture {
  private readonly chunks: Uint8Array[] = [];
  private kept = 0;
  private passed = 0;
  /** Bytes the process wrote, kept or not. */
  total = 0;

  constructor(
    readonly limit: number,
    readonly keepLimit: number = limit,
  ) {}

  /** The result holds less than the process wrote. */
  get truncated(): boolean {
    return this.total > Math.min(this.limit, this.keepLimit);
  }

  /** Takes a chunk; returns the part within `limit` (empty once it is reached). */
  push(chunk: Uint8Array): Uint8Array {
    this.total += chunk.length;
    const room = this.limit - this.passed;
    if (room <= 0 || chunk.length === 0) return chunk.subarray(0, 0);
    // Copy: the reader may reuse its buffer.
    const part = chunk.length <= room ? chunk.slice() : chunk.slice(0, room);
    this.passed += part.length;
    const keep = Math.min(part.length, this.keepLimit - this.kept);
    if (keep > 0) {
      this.chunks.push(keep === part.length ? part : part.subarray(0, keep));
      this.kept += keep;
    }
    return part;
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks, this.kept);
  }

  base64(): string {
    return this.bytes().toString("base64");
  }
}

/** JSON of an exec result or exec_exit notification without its two outputs, with room to spare. */
const RESULT_OVERHEAD = 4096;

/**
 * The most output per stream a result can return and still fit one frame with
 * both streams full (base64 grows 3 -> 4): with the defaults, 16 MiB frames
 * hold about 6 MiB of each stream. Streamed output goes out in chunks up to the
 * full cap; the result keeps this much and says truncated, instead of failing
 * with -32004 and losing the exit status too.
 */
export function resultFitBytes(maxFrameBytes: number): number {
  return Math.max(0, Math.floor((maxFrameBytes - RESULT_OVERHEAD) / 2 / 4) * 3);
}

/** JSON envelope of an exec_output notification without its data, with room to spare. */
const NOTIFICATION_OVERHEAD = 256;
const MAX_PIECE_BYTES = 48 * 1024;

/**
 * The largest chunk of raw bytes one exec_output notification may carry so its
 * frame stays within max_frame_bytes (base64 grows 3 -> 4).
 */
export function notificationPieceBytes(maxFrameBytes: number): number {
  const fit = Math.floor((maxFrameBytes - NOTIFICATION_OVERHEAD) / 4) * 3;
  return Math.max(3, Math.min(MAX_PIECE_BYTES, fit));
}

/** Splits `bytes` into views of at most `size` bytes. */
export function splitBytes(bytes: Uint8Array, size: number): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += size) pieces.push(bytes.subarray(at, at + size));
  return pieces;
}
