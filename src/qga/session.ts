/**
 * One QGA connection: JSON values in, one reply line per request out, in
 * request order (qemu-ga answers one request at a time; hosts rely on it).
 */
import type { Base64Bytes } from "../protocol/base64.ts";
import { responseFrames } from "../protocol/response-frames.ts";
import { idleGc } from "../runtime/idle-gc.ts";
import type { Connection, ConnectionHandler } from "../transport/transport.ts";
import { errorLine, type QgaDispatcher, type QgaReply } from "./dispatcher.ts";
import { genericError } from "./errors.ts";
import { BINARY_MARK } from "./json.ts";
import { QgaStreamParser, type QgaStreamSink } from "./stream.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();
const DELIMITER = Uint8Array.of(0xff);
/** Requests parsed but not yet answered; past this, reading pauses. */
const MAX_QUEUED = 64;

export class QgaSession implements ConnectionHandler, QgaStreamSink {
  private readonly parser = new QgaStreamParser(this);
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private paused = false;
  private closed = false;

  constructor(
    private readonly connection: Connection,
    private readonly dispatcher: QgaDispatcher,
  ) {}

  onData(chunk: Uint8Array): void {
    idleGc.noteActivity();
    this.parser.push(chunk);
  }

  async onInputEnd(): Promise<void> {
    await this.tail;
  }

  onClose(): void {
    this.closed = true;
    this.parser.reset();
  }

  /** As qemu-ga: the 0xFF is a lexer error that resets the parser, and it is reported. */
  onReset(): void {
    this.enqueue(() => plain(errorLine(genericError("JSON parse error, stray '\\uFFFD'"))));
  }

  onTooLarge(limit: number): void {
    this.enqueue(() => plain(errorLine(genericError(`JSON parse error, a message is above the limit of ${limit} bytes`))));
  }

  onStray(byte: number): void {
    this.enqueue(() => plain(errorLine(genericError(`JSON parse error, stray '${String.fromCharCode(byte)}'`))));
  }

  onMessage(bytes: Uint8Array): void {
    let value: unknown;
    try {
      value = JSON.parse(utf8.decode(bytes));
    } catch (error) {
      const detail = error instanceof TypeError ? "invalid UTF-8" : (error as Error).message.replace(/^JSON Parse error: /, "");
      // Parse errors carry no id: the request never became an object with one.
      return this.enqueue(() => plain(errorLine(genericError(`JSON parse error, ${detail}`))));
    }
    const transport = `qga:${this.connection.transport}`;
    this.enqueue(() => this.dispatcher.handle(value, transport));
  }

  /**
   * Replies leave in request order, whatever each one waits on, and commands
   * run one at a time, as qemu-ga's do. With nothing queued, a command that
   * answers synchronously is answered at once, without a promise hop.
   */
  private enqueue(produce: () => QgaReply | null | Promise<QgaReply | null>): void {
    if (this.queued === 0) {
      const reply = produce();
      if (!(reply instanceof Promise)) return this.deliver(reply);
      return this.track(reply);
    }
    this.track(this.tail.then(produce));
  }

  private track(pending: Promise<QgaReply | null>): void {
    this.queued++;
    if (this.queued > MAX_QUEUED && !this.paused) {
      this.paused = true;
      this.connection.pause();
    }
    this.tail = pending.then((reply) => {
      this.queued--;
      if (this.paused && this.queued <= MAX_QUEUED / 2) {
        this.paused = false;
        this.connection.resume();
      }
      this.deliver(reply);
    });
  }

  private deliver(reply: QgaReply | null): void {
    if (reply === null || this.closed) return;
    const bytes = reply.binary ? lineWithBinary(reply.line, reply.binary) : encoder.encode(`${reply.line}\n`);
    if (reply.delimited) this.connection.send(Buffer.concat([DELIMITER, bytes]), true);
    else this.connection.send(bytes, !responseFrames.isKept(bytes));
  }
}

/** The line with each BINARY_MARK replaced by the next file bytes' base64, encoded into the reply buffer as they are. */
function lineWithBinary(line: string, binary: Base64Bytes[]): Uint8Array {
  const texts = line.split(BINARY_MARK);
  const pieces: (string | Base64Bytes)[] = [texts[0]!];
  binary.forEach((bytes, i) => pieces.push(bytes, texts[i + 1]!));
  pieces.push("\n");
  return responseFrames.encodeLine(pieces);
}

function plain(line: string): QgaReply {
  return { line, delimited: false };
}
