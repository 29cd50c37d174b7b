/**
 * One connection's protocol state: frames in, JSON-RPC messages dispatched
 * with at most `maxInFlight` running at once, responses framed out in the
 * order they finish. When the limit is reached, reading pauses so a pipelining
 * host is slowed down instead of filling the agent's memory.
 */
import { idleGc } from "../runtime/idle-gc.ts";
import type { AgentConfig } from "../config/schema.ts";
import { silentLogger, type Logger } from "../log/logger.ts";
import type { CallContext } from "../services.ts";
import type { Connection, ConnectionHandler } from "../transport/transport.ts";
import { errorCode } from "./errors.ts";
import { encodeFrame, FrameDecoder, HEADER_BYTES, SYNC_MARKER, type FrameSink } from "./framing.ts";
import { errorResponse, type Response } from "./jsonrpc.ts";
import { parseFramePayload } from "./parse-frame.ts";
import { responseFrames } from "./response-frames.ts";

/** What the session needs of the dispatcher: one request in, its response (or null) out. */
export interface RequestHandler {
  handle(message: unknown, context: CallContext): Response | null | Promise<Response | null>;
}

export class RpcSession implements ConnectionHandler, FrameSink {
  private readonly decoder: FrameDecoder;
  private inFlight = 0;
  /** Frame bytes of the calls running: with max_in_flight_bytes, what a connection may make the agent hold. */
  private inFlightBytes = 0;
  private readonly waiting: { run: () => void; bytes: number }[] = [];
  private pumping = false;
  private paused = false;
  private closed = false;
  private whenIdle: (() => void) | null = null;
  /** Bumped on every resync: replies to requests of an earlier host are dropped, not sent to the new one. */
  private generation = 0;
  /** Replies produced while one chunk is decoded, written together: one syscall instead of one per reply. */
  private corked: Uint8Array[] | null = null;
  /** Passed to every call: where notifications for this connection go. */
  private readonly context: CallContext;

  constructor(
    private readonly connection: Connection,
    private readonly dispatcher: RequestHandler,
    private readonly limits: AgentConfig["limits"],
    private readonly logger: Logger = silentLogger,
  ) {
    this.decoder = new FrameDecoder(this, limits.max_frame_bytes);
    this.context = {
      transport: connection.transport,
      notify: (method, params) => {
        if (!this.closed) this.write(encodeFrame(JSON.stringify({ jsonrpc: "2.0", method, params })));
      },
    };
  }

  onData(chunk: Uint8Array): void {
    idleGc.noteActivity();
    this.corked = [];
    try {
      this.decoder.push(chunk);
    } catch (error) {
      // A bug of ours must not take the transport's read loop down: drop the partial frame and say so.
      this.logger.error("failed to process input; partial frame discarded", { transport: this.connection.transport, error: String(error) });
      this.decoder.reset();
      this.send(errorResponse(null, errorCode("INTERNAL_ERROR"), "Internal error while reading the stream; the partial frame was discarded"));
    } finally {
      const frames = this.corked;
      this.corked = null;
      // Corked frames are the session's own (kept frames were copied), so they are handed over.
      if (frames.length === 1) this.connection.send(frames[0]!, true);
      else if (frames.length > 1) this.connection.send(Buffer.concat(frames), true);
    }
  }

  onInputEnd(): Promise<void> {
    if (this.inFlight === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => (this.whenIdle = resolve));
  }

  onClose(): void {
    this.closed = true;
    this.decoder.reset();
    this.waiting.length = 0;
  }

  onOversizedFrame(length: number): void {
    const limit = this.limits.max_frame_bytes;
    this.send(
      errorResponse(null, errorCode("TOO_LARGE"), `Frame of ${length} bytes is above max_frame_bytes (${limit}); its payload was discarded`, {
        limit,
        length,
      }),
    );
  }

  onSync(): void {
    this.generation++;
    this.write(SYNC_MARKER);
  }

  onFrame(payload: Uint8Array): void {
    if (payload.length === 0) return this.send(errorResponse(null, errorCode("PARSE_ERROR"), "Parse error: empty frame"));
    let message: unknown;
    try {
      message = parseFramePayload(payload, { decodeBase64Fields: true });
    } catch (error) {
      return this.send(errorResponse(null, errorCode("PARSE_ERROR"), `Parse error: ${(error as Error).message}`));
    }
    if (Array.isArray(message)) return this.handleBatch(message, payload.length);
    this.schedule(message, payload.length, (response) => {
      if (response) this.send(response);
    });
  }

  private handleBatch(items: unknown[], bytes: number): void {
    if (items.length === 0) return this.send(errorResponse(null, errorCode("INVALID_REQUEST"), "Invalid Request: empty batch"));
    const limit = this.limits.max_batch_requests;
    if (items.length > limit) {
      return this.send(
        errorResponse(null, errorCode("TOO_LARGE"), `Batch of ${items.length} requests is above max_batch_requests (${limit})`, {
          limit,
          length: items.length,
        }),
      );
    }
    const responses: Response[] = [];
    let remaining = items.length;
    for (const item of items) {
      this.schedule(item, Math.ceil(bytes / items.length), (response) => {
        if (response) responses.push(response);
        // A batch of notifications only gets no reply at all.
        if (--remaining === 0 && responses.length > 0) this.send(responses);
      });
    }
  }

  private schedule(message: unknown, bytes: number, done: (response: Response | null) => void): void {
    const generation = this.generation;
    const reply = (response: Response | null) => done(generation === this.generation ? response : null);
    // Handed over once: the closures below outlive the dispatch until the reply, and must not keep the request
    // (an upload chunk's multi-MB string) alive that long, or only a full collection would free it.
    let request: unknown = message;
    const run = () => {
      this.inFlight++;
      this.inFlightBytes += bytes;
      const out = this.dispatcher.handle(request, this.context);
      request = undefined;
      if (out instanceof Promise) void out.then((response) => this.finish(response, bytes, reply));
      else this.finish(out, bytes, reply);
    };
    if (this.waiting.length === 0 && this.hasRoom(bytes)) return run();
    this.waiting.push({ run, bytes });
    if (!this.paused) {
      this.paused = true;
      this.connection.pause();
    }
  }

  /** Room for one more call of `bytes`: under both limits, or nothing running at all (one call always runs). */
  private hasRoom(bytes: number): boolean {
    if (this.inFlight === 0) return true;
    return this.inFlight < this.limits.max_in_flight && this.inFlightBytes + bytes <= this.limits.max_in_flight_bytes;
  }

  private finish(response: Response | null, bytes: number, done: (response: Response | null) => void): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    done(response);
    this.pump();
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    while (this.waiting.length > 0 && this.hasRoom(this.waiting[0]!.bytes)) this.waiting.shift()!.run();
    this.pumping = false;
    if (this.waiting.length > 0) return;
    if (this.paused && !this.closed) {
      this.paused = false;
      this.connection.resume();
    }
    if (this.inFlight === 0 && this.whenIdle) {
      this.whenIdle();
      this.whenIdle = null;
    }
  }

  private send(response: Response | Response[]): void {
    if (this.closed) return;
    const limit = this.limits.max_frame_bytes;
    let frame: Uint8Array;
    try {
      frame = responseFrames.encode(response);
    } catch (error) {
      // A result nested too deeply (or otherwise unserialisable) still gets an answer.
      frame = this.errorFrame(response, "INTERNAL_ERROR", `Internal error: the reply could not be serialised: ${(error as Error).message}`);
    }
    const length = frame.length - HEADER_BYTES;
    if (length > limit) {
      frame = this.errorFrame(response, "TOO_LARGE", `Response of ${length} bytes is above max_frame_bytes (${limit})`, { limit, length });
    }
    this.write(frame);
  }

  private write(bytes: Uint8Array): void {
    if (this.corked) this.corked.push(responseFrames.isKept(bytes) ? new Uint8Array(bytes) : bytes);
    else this.connection.send(bytes, !responseFrames.isKept(bytes));
  }

  /** The error that replaces a reply; a batch's replacement has id null. */
  private errorFrame(response: Response | Response[], name: "INTERNAL_ERROR" | "TOO_LARGE", message: string, data?: unknown): Uint8Array {
    const id = Array.isArray(response) ? null : response.id;
    return encodeFrame(JSON.stringify(errorResponse(id, errorCode(name), message, data)));
  }
}
