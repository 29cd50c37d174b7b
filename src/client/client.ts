/**
 * Host-side client: connects to the unix socket of the VM's chardev (or to an
 * agent on unix-listen) and calls methods with the types of src/schema.
 */
import { errorCode } from "../protocol/errors.ts";
import { FrameDecoder, encodeFrame, HEADER_BYTES, SYNC_MARKER, type FrameSink } from "../protocol/framing.ts";
import type { RequestId, Response } from "../protocol/jsonrpc.ts";
import { parseFramePayload } from "../protocol/parse-frame.ts";
import { signRequest } from "../security/hmac.ts";
import {
  METHOD_NAMES,
  METHODS,
  NOTIFICATIONS,
  describeIssues,
  type MethodName,
  type NotificationName,
  type NotificationParams,
  type ParamsInput,
  type Result,
} from "../schema/methods.ts";
import { socketHandlers, type SocketConnection } from "../transport/socket-connection.ts";
import { AF_VSOCK, connectStreamSocket, sockaddrVm } from "../transport/vsock/ffi.ts";
import type { Connection, ConnectionHandler } from "../transport/transport.ts";

export const DEFAULT_TIMEOUT_MS = 30_000;
/** Replies can be as large as the agent's max_frame_bytes allows; accept up to 1 GiB. */
const CLIENT_MAX_FRAME_BYTES = 1024 * 1024 * 1024;

export interface CallOptions {
  timeoutMs?: number;
}

/** The agent answered with a JSON-RPC error; `code` is from docs/protocol.md. */
export class AgentRpcError extends Error {
  constructor(
    readonly method: string,
    readonly code: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(`${method}: ${message} (code ${code})`);
    this.name = "AgentRpcError";
  }
}

export class AgentTimeoutError extends Error {
  constructor(
    readonly method: string,
    readonly timeoutMs: number,
  ) {
    super(`${method}: no answer from the agent within ${timeoutMs} ms`);
    this.name = "AgentTimeoutError";
  }
}

export class AgentConnectionError extends Error {
  override name = "AgentConnectionError";
}

interface Pending {
  method: MethodName;
  /** Payload bytes of the request frame: how an oversized-frame error (id null) is matched to its call. */
  frameBytes: number;
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}` ? `${Head}${Capitalize<CamelCase<Tail>>}` : S;

/** One typed method per RPC: client.ping(), client.getInfo(), ... */
export type MethodCalls = {
  [M in MethodName as CamelCase<M>]: {} extends ParamsInput<M>
    ? (params?: ParamsInput<M>, options?: CallOptions) => Promise<Result<M>>
    : (params: ParamsInput<M>, options?: CallOptions) => Promise<Result<M>>;
};

export function camelCase(name: string): string {
  return name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

export interface AgentClient extends MethodCalls {}

export class AgentClient implements ConnectionHandler, FrameSink {
  private readonly decoder = new FrameDecoder(this, CLIENT_MAX_FRAME_BYTES);
  private readonly pending = new Map<RequestId, Pending>();
  private nextId = 1;
  private connection: Connection | null = null;
  private closedError: Error | null = null;
  private readonly listeners = new Map<string, Set<(params: never) => void>>();
  /** False until the agent echoes our SYNC_MARKER: whatever arrives before it is left over from an earlier host. */
  private synced = false;

  private constructor(
    private readonly defaultTimeoutMs: number,
    /** [security] hmac_key_file's key, when the agent requires signed requests. */
    private readonly hmacKey: Uint8Array | undefined,
  ) {}

  /**
   * Connect to an agent: a unix socket path (QEMU's chardev socket for the
   * VM's port, or an agent on unix-listen), or "vsock:CID:PORT" for an agent
   * on vsock-listen.
   */
  static async connect(target: string, options: { timeoutMs?: number; hmacKey?: Uint8Array } = {}): Promise<AgentClient> {
    const vsock = /^vsock:(\d+):(\d+)$/.exec(target);
    const client = new AgentClient(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, options.hmacKey);
    const socket = socketHandlers("client", (connection) => {
      client.connection = connection;
      connection.send(SYNC_MARKER);
      return client;
    });
    try {
      if (vsock) {
        const fd = connectStreamSocket(AF_VSOCK, sockaddrVm(Number(vsock[2]), Number(vsock[1])));
        // Bun.connect takes a connected fd it did not create; bun-types only lists unix/TCP.
        await (Bun.connect as unknown as (o: { fd: number; socket: typeof socket }) => Promise<unknown>)({ fd, socket });
      } else {
        await Bun.connect<SocketConnection | undefined>({ unix: target, socket });
      }
    } catch (error) {
      throw new AgentConnectionError(`cannot connect to ${target}: ${(error as Error).message}`);
    }
    return client;
  }

  /**
   * Ping until the agent answers: the chardev socket accepts connections
   * before the guest has booted, so a connection alone proves nothing.
   */
  async waitReady({ timeoutMs = 60_000, attemptMs = 1_000 } = {}): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new AgentTimeoutError("waitReady", timeoutMs);
      // QEMU drops what the host writes while the guest has the port closed: resend until echoed.
      if (!this.synced) this.connection!.send(SYNC_MARKER);
      try {
        await this.call("ping", {}, { timeoutMs: Math.min(attemptMs, left) });
        return;
      } catch (error) {
        if (!(error instanceof AgentTimeoutError)) throw error;
      }
    }
  }

  call<M extends MethodName>(method: M, params?: ParamsInput<M>, options: CallOptions = {}): Promise<Result<M>> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    return new Promise<Result<M>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AgentTimeoutError(method, timeoutMs));
      }, timeoutMs);
      const frame = this.encode({ jsonrpc: "2.0", id, method, params: params ?? {} });
      this.pending.set(id, { method, frameBytes: frame.length - HEADER_BYTES, resolve: resolve as (value: unknown) => void, reject, timer });
      this.connection!.send(frame);
    });
  }

  /** A notification: no reply, no error report. */
  notify<M extends MethodName>(method: M, params?: ParamsInput<M>): void {
    if (this.closedError) throw this.closedError;
    this.connection!.send(this.encode({ jsonrpc: "2.0", method, params: params ?? {} }));
  }

  private encode(request: Record<string, unknown>): Uint8Array {
    return encodeFrame(JSON.stringify(this.hmacKey ? signRequest(this.hmacKey, request) : request));
  }

  /** Listen to a notification the agent pushes (e.g. exec_output); returns the function that stops listening. */
  onNotification<N extends NotificationName>(method: N, listener: (params: NotificationParams<N>) => void): () => void {
    let set = this.listeners.get(method);
    if (!set) this.listeners.set(method, (set = new Set()));
    set.add(listener as (params: never) => void);
    return () => set.delete(listener as (params: never) => void);
  }

  close(): void {
    this.connection?.close();
    this.failAll(new AgentConnectionError("client closed"));
  }

  onData(chunk: Uint8Array): void {
    this.decoder.push(chunk);
  }

  async onInputEnd(): Promise<void> {}

  onClose(): void {
    this.failAll(new AgentConnectionError("connection to the agent closed"));
  }

  onOversizedFrame(length: number): void {
    // Before the echo: a stale reply's tail, or the echo itself arriving a byte at a time (a serial line),
    // whose first four 0xFF read as a header. The decoder skips it and still finds the marker.
    if (!this.synced) return;
    this.connection?.close();
    this.failAll(new AgentConnectionError(`agent sent a frame of ${length} bytes, above the client's limit`));
  }

  onSync(): void {
    this.synced = true;
  }

  onFrame(payload: Uint8Array): void {
    if (!this.synced) return;
    let message: Response | { method: string; params: unknown };
    try {
      // A copy_from_guest reply is one long base64 string: parsed around it, as the agent parses upload chunks.
      message = parseFramePayload(payload) as typeof message;
    } catch {
      return; // Not ours to answer; a garbled reply fails its call by timeout.
    }
    if ("method" in message) return this.deliverNotification(message.method, message.params);
    const id = message.id ?? this.oversizedCall(message);
    const pending = this.pending.get(id);
    if (!pending) return; // Late reply to a call that already timed out, or an error without an id.
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("error" in message) {
      pending.reject(new AgentRpcError(pending.method, message.error.code, message.error.message, message.error.data));
      return;
    }
    const checked = METHODS[pending.method].result.safeParse(message.result);
    if (checked.success) pending.resolve(checked.data);
    else pending.reject(new AgentConnectionError(`${pending.method}: reply does not match the schema: ${describeIssues(checked.error)}`));
  }

  /**
   * The agent refuses a frame above its max_frame_bytes from the header alone,
   * before it could read an id (so the error's id is null); data.length is the
   * frame's length, which identifies the call that sent it.
   */
  private oversizedCall(message: Response): RequestId {
    if (!("error" in message) || message.error.code !== errorCode("TOO_LARGE")) return null;
    const length = (message.error.data as { length?: unknown } | undefined)?.length;
    for (const [id, pending] of this.pending) if (pending.frameBytes === length) return id;
    return null;
  }

  private deliverNotification(method: string, params: unknown): void {
    const listeners = this.listeners.get(method);
    if (!listeners || !Object.hasOwn(NOTIFICATIONS, method)) return;
    const checked = NOTIFICATIONS[method as NotificationName].params.safeParse(params);
    if (!checked.success) return; // A malformed notification is dropped, never passed on untyped.
    for (const listener of listeners) listener(checked.data as never);
  }

  private failAll(error: Error): void {
    this.closedError ??= error;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
  }
}

for (const name of METHOD_NAMES) {
  Object.defineProperty(AgentClient.prototype, camelCase(name), {
    value(this: AgentClient, params?: object, options?: CallOptions) {
      return this.call(name, params as never, options);
    },
  });
}
