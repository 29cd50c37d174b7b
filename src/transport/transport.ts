/**
 * Transports move bytes; they know nothing of framing or JSON-RPC. A transport
 * accepts connections (a unix socket has many, a virtio-serial port one at a
 * time) and hands each one's bytes to the handler the agent returns for it.
 */
export interface Connection {
  /** For logs and audit: "unix-listen", "virtio-serial", ... */
  readonly transport: string;
  /**
   * Queue bytes for the peer; the transport keeps a copy of what the peer has
   * not taken yet, so the caller may reuse `bytes`. `handedOver`: the caller
   * never touches `bytes` again, so what waits is queued as it is, not copied
   * (a 64 MB QGA reply line was copied whole).
   */
  send(bytes: Uint8Array, handedOver?: boolean): void;
  /** Stop delivering data until resume(): the session is full. */
  pause(): void;
  resume(): void;
  close(): void;
}

export interface ConnectionHandler {
  onData(chunk: Uint8Array): void;
  /** No more input, but replies can still be written (stdio): resolves once every call has answered. */
  onInputEnd(): Promise<void>;
  /** The peer went away (or the connection failed); no more data follows. */
  onClose(): void;
}

export type AcceptConnection = (connection: Connection) => ConnectionHandler;

export interface Transport {
  readonly name: string;
  /** Resolves once the transport is listening (or waiting for its device). */
  start(accept: AcceptConnection): Promise<void>;
  close(): Promise<void>;
}
