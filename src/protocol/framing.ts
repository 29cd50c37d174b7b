/**
 * Length-prefixed framing: [u32 big-endian length][payload].
 *
 * The decoder is a byte-level state machine that never buffers more than one
 * frame of at most `maxFrameBytes`. A frame whose declared length is above the
 * limit is reported once and its payload is skipped as it streams in, so a
 * hostile length cannot make the agent allocate or desynchronise.
 *
 * Resync: a length prefix cannot recover by itself from a partial frame left
 * by an earlier host (a virtio-serial guest does not always see a fast
 * disconnect/reconnect). SYNC_MARKER — eight 0xFF bytes, which UTF-8 JSON never
 * contains — drops whatever partial frame is pending wherever it appears, and
 * decoding restarts right after it. Hosts send it on connect; the agent echoes
 * it, and the host discards everything it receives before the echo.
 */

export const HEADER_BYTES = 4;
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** The largest max_frame_bytes a config may set: far below 0xFF000000, so no valid header starts with 0xFF. */
export const MAX_FRAME_BYTES_LIMIT = 1024 * 1024 * 1024;
/** A u32 length cannot describe more than this. */
export const MAX_ENCODABLE_FRAME_BYTES = 0xffff_ffff;

export const SYNC_MARKER = new Uint8Array(8).fill(0xff);

/**
 * Frames up to this size that arrive in pieces are assembled in one buffer
 * the decoder keeps (a 2 MiB upload chunk's frame is 2.8 MB): a fresh one per
 * frame cost page faults on every byte copied in.
 */
const KEPT_PAYLOAD_BYTES = 4 * 1024 * 1024;

export interface FrameSink {
  /** A complete payload. The view is only valid during the call. */
  onFrame(payload: Uint8Array): void;
  /** A header declared `length` bytes, above the limit; its payload is being skipped. */
  onOversizedFrame(length: number): void;
  /** A SYNC_MARKER arrived: any partial frame was dropped. */
  onSync(): void;
}

export class FrameDecoder {
  private readonly header = new Uint8Array(HEADER_BYTES);
  private headerFilled = 0;
  private payload: Uint8Array | null = null;
  private payloadFilled = 0;
  private keptPayload = new Uint8Array(0);
  private skipRemaining = 0;
  /** 0xFF bytes seen in a row so far, across chunks. */
  private syncRun = 0;
  /**
   * Just after a marker: more 0xFF bytes belong to it. The run that completes a
   * marker may have begun inside a header (a length such as 0x7FFFFFFF ends in
   * 0xFF bytes); the marker's own remaining bytes must not start a new header.
   * No header starts with 0xFF (max_frame_bytes is far below 0xFF000000).
   */
  private afterSync = false;

  constructor(
    private readonly sink: FrameSink,
    private readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES,
  ) {}

  /** True when no partial frame is pending (used to tell a clean disconnect from a cut one). */
  get idle(): boolean {
    return this.headerFilled === 0 && this.payload === null && this.skipRemaining === 0;
  }

  /** Forget any partial frame: the peer went away and a new stream starts. */
  reset(): void {
    this.headerFilled = 0;
    this.payload = null;
    this.payloadFilled = 0;
    this.skipRemaining = 0;
    this.syncRun = 0;
    this.afterSync = false;
  }

  push(chunk: Uint8Array): void {
    let start = 0;
    for (;;) {
      if (this.afterSync) {
        while (start < chunk.length && chunk[start] === 0xff) start++;
        if (start === chunk.length) return;
        this.afterSync = false;
      }
      const markerEnd = this.findMarkerEnd(chunk, start);
      if (markerEnd < 0) return this.decode(chunk, start, chunk.length);
      // Bytes before the marker still belong to the old stream; then start afresh.
      this.decode(chunk, start, Math.max(start, markerEnd - SYNC_MARKER.length));
      this.reset();
      this.sink.onSync();
      this.afterSync = true;
      start = markerEnd;
    }
  }

  /** Index just past a complete marker in chunk[from..], or -1 (remembering a trailing run of 0xFF). */
  private findMarkerEnd(chunk: Uint8Array, from: number): number {
    let run = this.syncRun;
    let i = from;
    while (i < chunk.length) {
      if (run === 0) {
        // JSON never holds 0xFF: in normal traffic this is one native scan per chunk.
        i = chunk.indexOf(0xff, i);
        if (i < 0) break;
      }
      if (chunk[i] === 0xff) {
        if (++run === SYNC_MARKER.length) {
          this.syncRun = 0;
          return i + 1;
        }
      } else {
        run = 0;
      }
      i++;
    }
    this.syncRun = i < 0 ? 0 : run;
    return -1;
  }

  /** Room for a payload of `length`: the kept buffer (sinks copy what they keep, see onFrame), or one of its own. */
  private payloadBuffer(length: number): Uint8Array {
    if (length > KEPT_PAYLOAD_BYTES) return new Uint8Array(length);
    if (this.keptPayload.length < length) this.keptPayload = new Uint8Array(Math.min(KEPT_PAYLOAD_BYTES, Math.max(length, 2 * this.keptPayload.length)));
    return this.keptPayload.subarray(0, length);
  }

  private decode(chunk: Uint8Array, from: number, end: number): void {
    let offset = from;
    while (offset < end) {
      if (this.skipRemaining > 0) {
        const n = Math.min(this.skipRemaining, end - offset);
        this.skipRemaining -= n;
        offset += n;
        continue;
      }
      if (this.payload !== null) {
        const n = Math.min(this.payload.length - this.payloadFilled, end - offset);
        this.payload.set(chunk.subarray(offset, offset + n), this.payloadFilled);
        this.payloadFilled += n;
        offset += n;
        if (this.payloadFilled === this.payload.length) {
          const payload = this.payload;
          this.payload = null;
          this.payloadFilled = 0;
          this.sink.onFrame(payload);
        }
        continue;
      }
      // Fast path: a whole header in this chunk and nothing half-read.
      let length: number;
      if (this.headerFilled === 0 && end - offset >= HEADER_BYTES) {
        length = readU32(chunk, offset);
        offset += HEADER_BYTES;
      } else {
        const n = Math.min(HEADER_BYTES - this.headerFilled, end - offset);
        this.header.set(chunk.subarray(offset, offset + n), this.headerFilled);
        this.headerFilled += n;
        offset += n;
        if (this.headerFilled < HEADER_BYTES) continue;
        this.headerFilled = 0;
        length = readU32(this.header, 0);
      }
      if (length > this.maxFrameBytes) {
        this.skipRemaining = length;
        this.sink.onOversizedFrame(length);
        continue;
      }
      if (end - offset >= length) {
        // Whole payload already here: hand out a view without copying.
        const payload = chunk.subarray(offset, offset + length);
        offset += length;
        this.sink.onFrame(payload);
      } else {
        this.payload = this.payloadBuffer(length);
        this.payloadFilled = 0;
      }
    }
  }
}

function readU32(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

const encoder = new TextEncoder();

/** Frame a UTF-8 string or raw payload in one allocation. */
export function encodeFrame(payload: string | Uint8Array): Uint8Array {
  const length = typeof payload === "string" ? Buffer.byteLength(payload, "utf8") : payload.length;
  if (length > MAX_ENCODABLE_FRAME_BYTES) throw new RangeError(`frame of ${length} bytes cannot be length-prefixed`);
  const frame = new Uint8Array(HEADER_BYTES + length);
  new DataView(frame.buffer).setUint32(0, length);
  if (typeof payload === "string") encoder.encodeInto(payload, frame.subarray(HEADER_BYTES));
  else frame.set(payload, HEADER_BYTES);
  return frame;
}
