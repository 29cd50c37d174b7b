import { FrameDecoder } from "../../src/protocol/framing.ts";
import type { Connection } from "../../src/transport/transport.ts";

/** A Connection that decodes what the session sends, and records pause/resume. */
export class FakeConnection implements Connection {
  readonly transport = "fake";
  readonly replies: unknown[] = [];
  readonly oversized: number[] = [];
  syncs = 0;
  pauses = 0;
  resumes = 0;
  paused = false;
  private readonly decoder = new FrameDecoder(
    {
      onFrame: (payload) => this.replies.push(JSON.parse(new TextDecoder().decode(payload))),
      onOversizedFrame: (length) => this.oversized.push(length),
      onSync: () => this.syncs++,
    },
    0xffffffff,
  );

  send(bytes: Uint8Array): void {
    this.decoder.push(bytes);
  }
  pause(): void {
    this.pauses++;
    this.paused = true;
  }
  resume(): void {
    this.resumes++;
    this.paused = false;
  }
  close(): void {}
}
