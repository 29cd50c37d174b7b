/**
 * The fuzz loops, shared by the CI-sized tests (test/e2e/*fuzz*.test.ts) and
 * the long local run (`npm run fuzz -- --seconds N`). Each loop drives the
 * compiled agent over a unix socket and throws a FuzzFinding on a wrong
 * reply, a hang (a marker not answered in time), a desync, or a dead agent.
 */
import { expect } from "bun:test";
import { SYNC_MARKER } from "../../src/protocol/framing.ts";
import { concatBytes, frame, pingRequest, RawConnection } from "../helpers/agent-process.ts";
import { checkNativeShape, nativeCases, type Reply } from "./native.ts";
import { qgaPieces } from "./qga.ts";
import type { Rng } from "./random.ts";

/** How long a loop runs: a count of cases, a deadline, or both (whichever ends first). */
export interface Budget {
  count?: number;
  deadline?: number;
}

export interface FuzzStats {
  executions: number;
  replies: number;
  kinds: Map<string, number>;
}

export class FuzzFinding extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FuzzFinding";
  }
}

/** A marker not answered within this long is a hang. */
const HANG_MS = 15_000;
const BURST = 250;
const utf8 = new TextDecoder();

const more = (budget: Budget, done: number) => done < (budget.count ?? Infinity) && Date.now() < (budget.deadline ?? Infinity);

function newStats(): FuzzStats {
  return { executions: 0, replies: 0, kinds: new Map() };
}

function count(stats: FuzzStats, kind: string): void {
  stats.executions++;
  stats.kinds.set(kind, (stats.kinds.get(kind) ?? 0) + 1);
}

/**
 * Native payloads in well-formed frames, pipelined in bursts; each fuzz frame
 * is followed by a marker ping, so the replies between two markers belong to
 * one fuzz frame and are checked against what it must produce.
 */
export async function fuzzNativeFrames(socketPath: string, rng: Rng, limits: { maxFrame: number; maxBatch: number }, budget: Budget): Promise<FuzzStats> {
  const makeCase = nativeCases(rng, limits);
  const stats = newStats();
  const connection = await RawConnection.connect(socketPath);
  try {
    while (more(budget, stats.executions)) {
      const start = stats.executions;
      const cases = [];
      const parts: Uint8Array[] = [];
      for (let i = 0; i < BURST && more(budget, stats.executions); i++) {
        const fuzz = makeCase();
        cases.push(fuzz);
        count(stats, fuzz.kind);
        parts.push(frame(fuzz.bytes), frame(JSON.stringify(pingRequest(`\u0001marker-${start + i}`))));
      }
      const written = connection.write(concatBytes(parts));
      for (const [n, fuzz] of cases.entries()) {
        const where = `seed ${rng.seed}, frame ${start + n} (${fuzz.kind})`;
        const got: Reply[] = [];
        for (;;) {
          const reply = await connection.next(HANG_MS).catch((error: Error) => {
            throw new FuzzFinding(`${where}: ${error.message}; payload starts ${JSON.stringify(utf8.decode(fuzz.bytes.subarray(0, 200)))}`);
          });
          if (reply?.id === `\u0001marker-${start + n}`) break;
          got.push(reply);
        }
        stats.replies += got.length;
        try {
          for (const reply of got) checkNativeShape(reply);
          fuzz.check(got);
        } catch (error) {
          throw new FuzzFinding(`${where}: ${(error as Error).message}\nsent: ${JSON.stringify(utf8.decode(fuzz.bytes.subarray(0, 300)))}\ngot: ${JSON.stringify(got).slice(0, 1000)}`);
        }
      }
      await written;
    }
  } finally {
    connection.close();
  }
  return stats;
}

/**
 * The framing layer itself: headers that lie about their length (short, long,
 * above the limit, near 4 GiB), cut off by the resync marker. After each, the
 * agent must echo the marker and answer a ping: it never loses its place.
 */
export async function fuzzNativeFraming(socketPath: string, rng: Rng, maxFrame: number, budget: Budget): Promise<FuzzStats> {
  const stats = newStats();
  const connection = await RawConnection.connect(socketPath);
  try {
    while (more(budget, stats.executions)) {
      const round = stats.executions;
      const declared = rng.pick([rng.int(64), rng.int(maxFrame), maxFrame + 1 + rng.int(1000), 0x7fff_ffff, 0xffff_fffe]);
      const kind = declared > maxFrame ? "lying-header-oversized" : "lying-header";
      count(stats, kind);
      const header = new Uint8Array(4);
      new DataView(header.buffer).setUint32(0, declared);
      // No 0xFF in the body: a run of them is the marker, and the marker comes last, on purpose.
      const body = rng.bytes(rng.int(Math.min(declared, 4096) + 100), 255);
      const lead = rng.chance(0.5) ? frame(JSON.stringify(pingRequest(`lead-${round}`))) : new Uint8Array(0);
      const marker = `\u0001sync-${round}`;
      const syncsBefore = connection.syncs;
      await connection.write(concatBytes([lead, header, body, SYNC_MARKER, frame(JSON.stringify(pingRequest(marker)))]));
      const where = `seed ${rng.seed}, framing round ${round} (${kind}, declared ${declared}, sent ${body.length})`;
      for (;;) {
        const reply = await connection.next(HANG_MS).catch((error: Error) => {
          throw new FuzzFinding(`${where}: ${error.message}`);
        });
        if (reply?.id === marker) break;
        stats.replies++;
        try {
          checkNativeShape(reply);
        } catch (error) {
          throw new FuzzFinding(`${where}: ${(error as Error).message}\ngot: ${JSON.stringify(reply).slice(0, 500)}`);
        }
      }
      if (connection.syncs <= syncsBefore) throw new FuzzFinding(`${where}: the marker was not echoed`);
    }
  } finally {
    connection.close();
  }
  return stats;
}

const QGA_ERROR_CLASSES = new Set(["GenericError", "CommandNotFound"]);

/**
 * The QGA stream: pieces of garbage and mutated requests, and every
 * `markerEvery` pieces a resync as libvirt does it (0xFF, then
 * guest-sync-delimited with a fresh id) that must be answered. Every reply
 * line on the way must be a QGA return or error.
 */
export async function fuzzQga(socketPath: string, rng: Rng, budget: Budget, markerEvery = 50): Promise<FuzzStats> {
  const nextPiece = qgaPieces(rng);
  const stats = newStats();
  let received = Buffer.alloc(0);
  let closed = false;
  const connection = await Bun.connect({
    unix: socketPath,
    socket: {
      data: (_, chunk) => void (received = Buffer.concat([received, chunk])),
      close: () => void (closed = true),
    },
  });
  const checkLines = (bytes: Buffer, where: string) => {
    for (const raw of bytes.toString("latin1").split("\n")) {
      const line = raw.replaceAll("\xff", "");
      if (line === "") continue;
      try {
        const reply = JSON.parse(Buffer.from(line, "latin1").toString("utf8"));
        if ("error" in reply) {
          expect(QGA_ERROR_CLASSES.has(reply.error.class)).toBe(true);
          expect(typeof reply.error.desc).toBe("string");
        } else expect("return" in reply).toBe(true);
      } catch (error) {
        throw new FuzzFinding(`${where}: a reply that is not a QGA reply: ${JSON.stringify(line.slice(0, 300))} (${(error as Error).message})`);
      }
    }
  };
  try {
    while (more(budget, stats.executions)) {
      const piece = nextPiece();
      count(stats, piece.kind);
      connection.write(piece.bytes);
      if (stats.executions % markerEvery !== 0) continue;
      const id = 1_000_000 + stats.executions;
      const where = `seed ${rng.seed}, QGA message ${stats.executions}`;
      checkLines(received, where);
      received = Buffer.alloc(0);
      connection.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }))]));
      const deadline = Date.now() + HANG_MS;
      for (;;) {
        const at = received.lastIndexOf(0xff);
        const rest = at >= 0 ? received.subarray(at + 1).toString() : "";
        const line = rest.slice(0, rest.indexOf("\n") + 1);
        if (line !== "" && JSON.parse(line).return === id) break;
        if (closed) throw new FuzzFinding(`${where}: the agent closed the connection`);
        if (Date.now() > deadline) throw new FuzzFinding(`${where}: marker ${id} was not answered within ${HANG_MS} ms`);
        await Bun.sleep(2);
      }
      checkLines(received.subarray(0, received.lastIndexOf(0xff)), where);
      stats.replies += received.toString("latin1").split("\n").length - 1;
      received = Buffer.alloc(0);
    }
  } finally {
    connection.end();
  }
  return stats;
}

/** One line per loop: executions, replies and how many of each kind. */
export function describeStats(name: string, stats: FuzzStats): string {
  return `${name}: ${stats.executions} executions, ${stats.replies} replies; ${JSON.stringify(Object.fromEntries([...stats.kinds].sort()))}`;
}
