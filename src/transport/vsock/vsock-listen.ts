import type { SocketListener } from "bun";
import type { Logger } from "../../log/logger.ts";
import { socketHandlers, type SocketConnection } from "../socket-connection.ts";
import type { AcceptConnection, Transport } from "../transport.ts";
import { AF_VSOCK, listenStreamSocket, sockaddrVm } from "./ffi.ts";

/** AF_VSOCK stream socket on a port: hosts connect with the guest's CID. */
export class VsockListenTransport implements Transport {
  readonly name = "vsock-listen";
  private listener: SocketListener<SocketConnection | undefined> | null = null;

  constructor(
    private readonly port: number,
    private readonly logger: Logger,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    const fd = listenStreamSocket(AF_VSOCK, sockaddrVm(this.port));
    // Bun.listen accepts a listening fd it did not create; bun-types only lists unix/TCP.
    const listen = Bun.listen as unknown as (options: {
      fd: number;
      socket: ReturnType<typeof socketHandlers>;
    }) => SocketListener<SocketConnection | undefined>;
    this.listener = listen({ fd, socket: socketHandlers(this.name, accept) });
    this.logger.info("listening", { transport: this.name, port: this.port });
  }

  async close(): Promise<void> {
    this.listener?.stop(true);
    this.listener = null;
  }
}
