import { lstatSync, unlinkSync } from "node:fs";
import type { SocketListener } from "bun";
import type { Logger } from "../log/logger.ts";
import { socketHandlers, type SocketConnection } from "./socket-connection.ts";
import type { AcceptConnection, Transport } from "./transport.ts";

/** A unix stream socket, many hosts at once: for host-side tests and containers. */
export class UnixListenTransport implements Transport {
  readonly name = "unix-listen";
  private listener: SocketListener<SocketConnection | undefined> | null = null;

  constructor(
    private readonly path: string,
    private readonly logger: Logger,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    removeStaleSocket(this.path);
    this.listener = Bun.listen<SocketConnection | undefined>({
      unix: this.path,
      socket: socketHandlers(this.name, accept),
    });
    this.logger.info("listening", { transport: this.name, path: this.path });
  }

  async close(): Promise<void> {
    this.listener?.stop(true);
    this.listener = null;
    removeStaleSocket(this.path);
  }
}

/** A socket file left by an earlier run is replaced; anything else at that path is an error. */
function removeStaleSocket(path: string): void {
  let stat;
  try {
    stat = lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  unlinkSync(path);
}
