/**
 * A Bun socket as a Connection: Bun's write() takes what the kernel accepts
 * and returns the count, so the rest is queued here and flushed on drain.
 * Reading pauses while the session is full or the peer is not reading its
 * replies, so a host cannot grow the agent's memory by never reading.
 */
import type { Socket } from "bun";
import type { Connection, ConnectionHandler } from "./transport.ts";

/** Above this many unsent bytes, stop reading requests until the peer catches up. */
const OUTPUT_HIGH_WATER_BYTES = 4 * 1024 * 1024;

export class SocketConnection implements Connection {
  handler: ConnectionHandler | null = null;
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private pausedBySession = false;
  private readPaused = false;
  private closed = false;

  constructor(
    readonly transport: string,
    private readonly socket: Socket<unknown>,
  ) {}

  send(bytes: Uint8Array): void {
    if (this.closed) return;
    if (this.queue.length === 0) {
      const written = this.socket.write(bytes);
      if (written === bytes.length) return;
      bytes = bytes.subarray(Math.max(written, 0));
    }
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    this.updateReading();
  }

  /** Called from the socket's drain event. */
  flush(): void {
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const written = this.socket.write(head);
      if (written <= 0) break;
      this.queuedBytes -= written;
      if (written < head.length) {
        this.queue[0] = head.subarray(written);
        break;
      }
      this.queue.shift();
    }
    this.updateReading();
  }

  pause(): void {
    this.pausedBySession = true;
    this.updateReading();
  }

  resume(): void {
    this.pausedBySession = false;
    this.updateReading();
  }

  close(): void {
    if (this.closed) return;
    this.socket.end();
    this.markClosed();
  }

  /** The socket is gone: drop what was queued and tell the session once. */
  markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.handler?.onClose();
  }

  private updateReading(): void {
    const shouldPause = this.pausedBySession || this.queuedBytes > OUTPUT_HIGH_WATER_BYTES;
    if (shouldPause === this.readPaused || this.closed) return;
    this.readPaused = shouldPause;
    if (shouldPause) this.socket.pause();
    else this.socket.resume();
  }
}

/** Socket handlers for Bun.listen that drive SocketConnections. */
export function socketHandlers(transport: string, accept: (connection: Connection) => ConnectionHandler) {
  return {
    binaryType: "uint8array" as const,
    open(socket: Socket<SocketConnection | undefined>) {
      const connection = new SocketConnection(transport, socket as Socket<unknown>);
      socket.data = connection;
      connection.handler = accept(connection);
    },
    data(socket: Socket<SocketConnection | undefined>, chunk: Uint8Array) {
      socket.data?.handler?.onData(chunk);
    },
    drain(socket: Socket<SocketConnection | undefined>) {
      socket.data?.flush();
    },
    close(socket: Socket<SocketConnection | undefined>) {
      socket.data?.markClosed();
    },
    error(socket: Socket<SocketConnection | undefined>) {
      // The socket is unusable: close it, so the host sees the end instead of a silent connection.
      socket.data?.close();
    },
  };
}
