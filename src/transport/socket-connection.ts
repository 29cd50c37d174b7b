/** A Bun socket as a Connection (unix-listen, vsock-listen, and the host client). */
import type { Socket } from "bun";
import { BufferedConnection } from "./buffered-connection.ts";
import type { Connection, ConnectionHandler } from "./transport.ts";

export class SocketConnection extends BufferedConnection {
  constructor(
    transport: string,
    private readonly socket: Socket<unknown>,
  ) {
    super(transport);
  }

  /** Bun's write() takes what the kernel accepts and returns the count; the rest waits for drain. */
  protected writeSome(bytes: Uint8Array): number {
    return this.socket.write(bytes);
  }

  protected retryLater(): void {
    // The socket's drain event calls flush().
  }

  protected setReadPaused(paused: boolean): void {
    if (paused) this.socket.pause();
    else this.socket.resume();
  }

  protected endTransport(): void {
    this.socket.end();
  }
}

/** Socket handlers for Bun.listen / Bun.connect that drive SocketConnections. */
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
