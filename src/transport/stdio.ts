import type { Logger } from "../log/logger.ts";
import type { AcceptConnection, Connection, Transport } from "./transport.ts";

/**
 * stdin/stdout as the one connection (for `ssh guest kvm-manager-agent
 * --transport stdio` and tests). The agent stops when stdin ends.
 */
export class StdioTransport implements Transport {
  readonly name = "stdio";
  private readonly stdout = Bun.stdout.writer();

  constructor(
    private readonly logger: Logger,
    private readonly onEnd: () => void,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    const stdout = this.stdout;
    let reading: Promise<void> | null = null;
    let resumeReading: (() => void) | null = null;
    const connection: Connection = {
      transport: this.name,
      send(bytes) {
        stdout.write(bytes);
        void stdout.flush();
      },
      pause() {
        reading ??= new Promise<void>((resolve) => (resumeReading = resolve));
      },
      resume() {
        resumeReading?.();
        reading = null;
        resumeReading = null;
      },
      close() {},
    };
    const handler = accept(connection);
    this.logger.info("serving on stdin/stdout", { transport: this.name });
    void (async () => {
      for await (const chunk of Bun.stdin.stream()) {
        handler.onData(chunk);
        if (reading) await reading;
      }
      await handler.onInputEnd();
      await stdout.flush();
      handler.onClose();
      this.onEnd();
    })();
  }

  async close(): Promise<void> {
    await this.stdout.flush();
  }
}
