/**
 * Minimal benchmark clients: a Bun unix socket, a write queue for partial
 * writes, and a splitter that cuts the byte stream into replies. Both wire
 * formats get the same treatment (one Bun.connect, the same request layout,
 * the same reply parser) so the client's own cost is the same on both sides
 * of a comparison.
 *
 * File chunks are multi-MB strings, and this machine pays dearly for every
 * fresh page (a PVM guest: a third of the client's samples were in the page
 * fault path). So, for both protocols alike, requests are laid out into kept
 * buffers with their base64 copied in as it is, and replies are parsed with
 * the long string cut out of the bytes first (the agent's own parser); the
 * client used more CPU per 64 MiB round trip than our agent did.
 */
import type { Socket } from "bun";
import { SYNC_MARKER } from "../../src/protocol/framing.ts";
import { parseFramePayload } from "../../src/protocol/parse-frame.ts";

export interface Endpoint {
  /** "kvm-manager-agent", "kvm-manager-agent (QGA)" or "qemu-ga". */
  readonly label: string;
  /** The wire protocol: our JSON-RPC frames, or qemu-ga's JSON lines (which our agent speaks too). */
  readonly protocol: "native" | "qga";
  readonly pid: number;
  readonly conn: RawConn;
  /** Wire bytes of one request, to keep; `seq` is unique per connection (ours puts it in the id). */
  encode(call: object, seq: number): Uint8Array;
  /** Encodes one request into a buffer the connection reuses once it is written, and writes it. */
  send(call: object, seq: number): void;
  /** Throws unless `reply` is a success; returns the seq it answers. */
  verify(reply: Uint8Array): number;
  /** The seq a reply answers and its result (ours: `result`, qemu-ga: `return`); throws with the error otherwise. */
  decode(reply: Uint8Array): { seq: number; value: unknown };
}

/**
 * Cuts complete replies out of buf[0..length); returns the bytes consumed.
 * `scanFrom` is where an earlier call stopped looking, so a large reply that
 * arrives in many reads is not rescanned from its start each time.
 */
type Splitter = (buf: Uint8Array, length: number, scanFrom: number, emit: (reply: Uint8Array) => void) => number;

/** [u32 BE length][payload]; 0xFF bytes between frames are resync echoes (no header starts with 0xFF) and are skipped. */
const splitFrames: Splitter = (buf, length, _scanFrom, emit) => {
  let at = 0;
  for (;;) {
    while (at < length && buf[at] === 0xff) at++;
    if (length - at < 4) break;
    const size = ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
    if (length - at - 4 < size) break;
    emit(buf.subarray(at + 4, at + 4 + size));
    at += 4 + size;
  }
  return at;
};

/** QGA: one JSON document per line. */
const splitLines: Splitter = (buf, length, scanFrom, emit) => {
  let at = 0;
  let from = scanFrom;
  for (;;) {
    const nl = buf.subarray(0, length).indexOf(10, from);
    if (nl < 0) break;
    if (nl > at) emit(buf.subarray(at, nl));
    at = from = nl + 1;
  }
  return at;
};

/** How replies and requests are delimited: our length prefixes, or qemu-ga's JSON lines. */
type Framing = "length-prefixed" | "lines";

/** Request buffers kept per connection: the requests in flight (two upload chunks) and one being laid out. */
const MAX_SPARE_BUFFERS = 4;

export class RawConn {
  /** Called once per reply; the view is only valid during the call. */
  onReply: (reply: Uint8Array) => void = () => {
    throw new Error("unexpected reply with no request outstanding");
  };
  onError: (error: Error) => void = () => {};
  private socket!: Socket<undefined>;
  /** Received bytes not yet cut into replies: buffer[0..buffered), grown by doubling (amortised O(n) copying). */
  private buffer = new Uint8Array(64 * 1024);
  private buffered = 0;
  /** How far the splitter has already looked for a reply boundary. */
  private scanned = 0;
  /** Bytes the socket has not taken yet, with the kept buffer they are part of (given back once all written). */
  private readonly outQueue: { bytes: Uint8Array; owner: Buffer | null }[] = [];
  /** Request buffers not in flight, for requestBuffer(). */
  private readonly spareBuffers: Buffer[] = [];
  closed = false;
  /** While set, bytes are dropped until a whole SYNC_MARKER has passed (0xFF bytes seen in a row so far). */
  private syncRun: number | null = null;
  private onSynced: (() => void) | null = null;

  private constructor(private readonly split: Splitter) {}

  static async connect(path: string, framing: Framing): Promise<RawConn> {
    const conn = new RawConn(framing === "lines" ? splitLines : splitFrames);
    conn.socket = await Bun.connect<undefined>({
      unix: path,
      socket: {
        binaryType: "uint8array",
        data: (_s, chunk: Uint8Array) => conn.onData(chunk),
        drain: () => conn.flush(),
        close: () => conn.fail(new Error(`connection to ${path} closed`)),
        error: (_s, error) => conn.fail(error),
      },
    });
    return conn;
  }

  /** Our protocol's resync: send the marker, drop everything until the agent echoes it. */
  resync(): Promise<void> {
    this.syncRun = 0;
    const synced = new Promise<void>((resolve) => (this.onSynced = resolve));
    this.write(SYNC_MARKER);
    return synced;
  }

  /** A kept buffer of at least `bytes` for one request; pass it to write() as the owner of the bytes laid out in it. */
  requestBuffer(bytes: number): Buffer {
    const fits = this.spareBuffers.findIndex((buffer) => buffer.length >= bytes);
    if (fits >= 0) return this.spareBuffers.splice(fits, 1)[0]!;
    return Buffer.allocUnsafeSlow(bytes);
  }

  /** Writes `bytes`, queueing what the socket does not take now; `owner` (from requestBuffer) is kept again once all are written. */
  write(bytes: Uint8Array, owner: Buffer | null = null): void {
    if (this.closed) throw new Error("write on a closed connection");
    if (this.outQueue.length === 0) {
      const n = this.socket.write(bytes);
      if (n === bytes.length) return this.giveBack(owner);
      bytes = bytes.subarray(Math.max(n, 0));
    }
    this.outQueue.push({ bytes, owner });
  }

  private giveBack(owner: Buffer | null): void {
    if (owner && this.spareBuffers.length < MAX_SPARE_BUFFERS) this.spareBuffers.push(owner);
  }

  close(): void {
    this.closed = true;
    this.socket.end();
  }

  private flush(): void {
    while (this.outQueue.length > 0) {
      const head = this.outQueue[0]!;
      const n = this.socket.write(head.bytes);
      if (n <= 0) return;
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(n);
        return;
      }
      this.outQueue.shift();
      this.giveBack(head.owner);
    }
  }

  private fail(error: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.onError(error);
  }

  private onData(chunk: Uint8Array): void {
    if (this.syncRun !== null) {
      let i = 0;
      while (i < chunk.length && this.syncRun < SYNC_MARKER.length) this.syncRun = chunk[i++] === 0xff ? this.syncRun + 1 : 0;
      if (this.syncRun < SYNC_MARKER.length) return;
      this.syncRun = null;
      this.onSynced?.();
      chunk = chunk.subarray(i);
    }
    if (this.buffered + chunk.length > this.buffer.length) {
      let capacity = this.buffer.length;
      while (capacity < this.buffered + chunk.length) capacity *= 2;
      const grown = new Uint8Array(capacity);
      grown.set(this.buffer.subarray(0, this.buffered));
      this.buffer = grown;
    }
    // Copy: Bun may reuse the chunk's memory after this callback.
    this.buffer.set(chunk, this.buffered);
    const scanFrom = this.buffered;
    this.buffered += chunk.length;
    let used: number;
    try {
      used = this.split(this.buffer, this.buffered, Math.max(scanFrom, this.scanned), (reply) => this.onReply(reply));
    } catch (error) {
      this.fail(error as Error);
      return;
    }
    if (used > 0) {
      this.buffer.copyWithin(0, used, this.buffered);
      this.buffered -= used;
      this.scanned = 0;
    } else {
      this.scanned = this.buffered;
    }
  }
}

const utf8 = new TextDecoder();

/**
 * A long base64 text a request carries (a file chunk, from Buffer#toString("base64")).
 * It goes into the request's bytes as it is: base64 needs no JSON escaping, so
 * the request's JSON text never holds a copy of it.
 */
export class Base64Text {
  constructor(readonly text: string) {}
}

/** Stands in for a Base64Text in the JSON text: a string no request holds (NUL and 128 random bits). */
const PLACEHOLDER = `\u0000kma-bench-${crypto.getRandomValues(new Uint32Array(4)).join("-")}`;
const QUOTED_PLACEHOLDER = JSON.stringify(PLACEHOLDER);

/** A request's JSON as text pieces and the Base64Text members between them, with its byte length. */
interface Layout {
  pieces: (string | Base64Text)[];
  bytes: number;
}

function layout(value: object, trailer = ""): Layout {
  const texts: Base64Text[] = [];
  const json = JSON.stringify(value, (_key, member) => (member instanceof Base64Text ? (texts.push(member), PLACEHOLDER) : member));
  const parts = texts.length === 0 ? [json] : json.split(QUOTED_PLACEHOLDER);
  if (parts.length !== texts.length + 1) throw new Error("bench request: a string member holds the Base64Text placeholder");
  const pieces: (string | Base64Text)[] = [];
  let bytes = 0;
  parts.forEach((part, i) => {
    if (i > 0) {
      pieces.push(texts[i - 1]!);
      bytes += 2 + texts[i - 1]!.text.length;
    }
    pieces.push(part);
    bytes += Buffer.byteLength(part);
  });
  if (trailer) {
    pieces.push(trailer);
    bytes += Buffer.byteLength(trailer);
  }
  return { pieces, bytes };
}

/** Writes the layout's bytes into `target` from `at`. */
function writeLayout({ pieces }: Layout, target: Buffer, at: number): void {
  for (const piece of pieces) {
    if (typeof piece === "string") {
      at += target.write(piece, at, "utf8");
      continue;
    }
    target[at++] = 0x22;
    at += target.write(piece.text, at, "latin1");
    target[at++] = 0x22;
  }
}

/** The wire bytes of `value` in `framing`, laid out in `target(size)` or in a fresh buffer; `owner` is that whole buffer. */
function requestBytes(value: object, framing: Framing, target?: (bytes: number) => Buffer): { frame: Buffer; owner: Buffer } {
  const lines = framing === "lines";
  const request = layout(value, lines ? "\n" : "");
  const header = lines ? 0 : 4;
  const size = header + request.bytes;
  const owner = target ? target(size) : Buffer.allocUnsafe(size);
  if (!lines) owner.writeUInt32BE(request.bytes, 0);
  writeLayout(request, owner, header);
  return { frame: owner.subarray(0, size), owner };
}

/** Our agent: JSON-RPC 2.0 in length-prefixed frames; the seq is the request id. */
export async function nativeEndpoint(path: string, pid: number, handshakeMs = 10_000): Promise<Endpoint> {
  const conn = await RawConn.connect(path, "length-prefixed");
  // On a real port, bytes of an earlier host may still be in flight: start from a clean stream.
  await withTimeout(conn.resync(), handshakeMs, "kvm-manager-agent resync").catch((error) => {
    conn.close();
    throw error;
  });
  return {
    label: "kvm-manager-agent",
    protocol: "native",
    pid,
    conn,
    encode(call, seq) {
      return requestBytes({ jsonrpc: "2.0", id: seq, ...call }, "length-prefixed").frame;
    },
    send(call, seq) {
      const { frame, owner } = requestBytes({ jsonrpc: "2.0", id: seq, ...call }, "length-prefixed", (bytes) => conn.requestBuffer(bytes));
      conn.write(frame, owner);
    },
    verify(reply) {
      const message = parseFramePayload(reply) as { jsonrpc?: unknown; id?: unknown; result?: unknown; error?: unknown };
      if (message.jsonrpc !== "2.0" || typeof message.id !== "number" || !("result" in message) || "error" in message) {
        throw new Error(`kvm-manager-agent: not a JSON-RPC result: ${utf8.decode(reply).slice(0, 300)}`);
      }
      return message.id;
    },
    decode(reply) {
      const message = parseFramePayload(reply) as { id: number; result?: unknown; error?: { message: string } };
      if (message.error) throw new Error(`kvm-manager-agent: ${message.error.message}`);
      return { seq: message.id, value: message.result };
    },
  };
}

/** The QGA protocol (qemu-ga's, or ours on its QGA port): QMP-style JSON lines; replies carry no id, they come back in order. */
export async function qgaEndpoint(path: string, pid: number, handshakeMs = 5_000, label = "qemu-ga"): Promise<Endpoint> {
  const conn = await RawConn.connect(path, "lines");
  // Requests are sent in the order they are encoded, so replies answer that order.
  const inOrder: number[] = [];
  let head = 0;
  const expect = (seq: number) => {
    if (head > 4096 && head * 2 > inOrder.length) {
      inOrder.splice(0, head);
      head = 0;
    }
    inOrder.push(seq);
  };
  const endpoint: Endpoint = {
    label,
    protocol: "qga",
    pid,
    conn,
    encode(call, seq) {
      expect(seq);
      return requestBytes(call, "lines").frame;
    },
    send(call, seq) {
      expect(seq);
      const { frame, owner } = requestBytes(call, "lines", (bytes) => conn.requestBuffer(bytes));
      conn.write(frame, owner);
    },
    verify(reply) {
      const message = parseFramePayload(reply) as { return?: unknown };
      if (typeof message !== "object" || message === null || !("return" in message)) {
        throw new Error(`${label}: reply has no "return": ${utf8.decode(reply).slice(0, 300)}`);
      }
      if (head >= inOrder.length) throw new Error(`${label}: reply with no request outstanding`);
      return inOrder[head++]!;
    },
    decode(reply) {
      const message = parseFramePayload(reply) as { return?: unknown; error?: { desc: string } };
      const seq = inOrder[head++]!;
      if (message.error) throw new Error(`${label}: ${message.error.desc}`);
      return { seq, value: message.return };
    },
  };
  // Flush the stream: guest-sync answers with our id once everything before it is done.
  const syncId = Math.floor(Math.random() * 1e9);
  const synced = new Promise<void>((resolve, reject) => {
    conn.onError = reject;
    conn.onReply = (reply) => {
      const message = parseFramePayload(reply) as { return?: unknown };
      if (message.return === syncId) resolve();
    };
  });
  conn.write(requestBytes({ execute: "guest-sync", arguments: { id: syncId } }, "lines").frame);
  await withTimeout(synced, handshakeMs, `${label} guest-sync`).catch((error) => {
    conn.close();
    throw error;
  });
  return endpoint;
}

export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
