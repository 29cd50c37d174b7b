/**
 * The two measurement loops, identical for every endpoint: sequential round
 * trips (latency) and a fixed window of outstanding requests (throughput).
 * Requests are encoded before the clock starts; every reply is verified.
 */
import { readFileSync } from "node:fs";
import type { Endpoint } from "./raw-conn.ts";

export interface LatencySample {
  /** Round-trip times in µs, sorted ascending. */
  micros: number[];
}

export interface ThroughputSample {
  requests: number;
  seconds: number;
  /** user+system CPU the server process spent during the run (all its threads). */
  serverCpuSeconds: number;
}

let seqCounter = 1;

/** `warmup` untimed calls, then `count` timed ones, one at a time. */
export async function sequential(ep: Endpoint, call: object, count: number, warmup: number): Promise<LatencySample> {
  const total = warmup + count;
  const requests = Array.from({ length: total }, () => {
    const seq = seqCounter++;
    return { seq, bytes: ep.encode(call, seq) };
  });
  const micros = new Array<number>(count);
  let waiting: { seq: number; resolve: () => void; reject: (e: Error) => void } | null = null;
  ep.conn.onReply = (reply) => {
    const w = waiting;
    if (!w) throw new Error(`${ep.label}: reply with no request outstanding`);
    waiting = null;
    try {
      const seq = ep.verify(reply);
      if (seq !== w.seq) throw new Error(`${ep.label}: reply for ${seq}, expected ${w.seq}`);
      w.resolve();
    } catch (error) {
      w.reject(error as Error);
    }
  };
  ep.conn.onError = (error) => waiting?.reject(error);
  for (let i = 0; i < total; i++) {
    const { seq, bytes } = requests[i]!;
    const done = new Promise<void>((resolve, reject) => {
      waiting = { seq, resolve, reject };
    });
    const t0 = Bun.nanoseconds();
    ep.conn.write(bytes);
    await done;
    const t1 = Bun.nanoseconds();
    if (i >= warmup) micros[i - warmup] = (t1 - t0) / 1000;
  }
  micros.sort((a, b) => a - b);
  return { micros };
}

/** Keep `window` requests outstanding until `count` have been answered. */
export async function pipelined(ep: Endpoint, call: object, count: number, window: number): Promise<ThroughputSample> {
  const seqs = new Int32Array(count);
  const requests: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    seqs[i] = seqCounter++;
    requests.push(ep.encode(call, seqs[i]!));
  }
  const firstSeq = seqs[0]!;
  const answered = new Uint8Array(count);
  let sent = 0;
  let received = 0;
  let refill = 0;
  const cpu0 = cpuSeconds(ep.pid);
  const t0 = Bun.nanoseconds();
  const finished = new Promise<void>((resolve, reject) => {
    ep.conn.onError = reject;
    ep.conn.onReply = (reply) => {
      const seq = ep.verify(reply);
      const index = seq - firstSeq;
      if (index < 0 || index >= sent || answered[index]) throw new Error(`${ep.label}: unexpected reply for ${seq}`);
      answered[index] = 1;
      received++;
      if (received === count) resolve();
      else if (sent < count) refill++;
      // Send the refills of one read together once the splitter is done with it.
      if (refill === 1) queueMicrotask(sendRefills);
    };
  });
  const sendRefills = () => {
    const n = Math.min(refill, count - sent);
    refill = 0;
    if (n <= 0) return;
    ep.conn.write(concat(requests, sent, sent + n));
    sent += n;
  };
  sent = Math.min(window, count);
  ep.conn.write(concat(requests, 0, sent));
  await finished;
  const seconds = (Bun.nanoseconds() - t0) / 1e9;
  return { requests: count, seconds, serverCpuSeconds: cpuSeconds(ep.pid) - cpu0 };
}

function concat(parts: Uint8Array[], from: number, to: number): Uint8Array {
  if (to - from === 1) return parts[from]!;
  let length = 0;
  for (let i = from; i < to; i++) length += parts[i]!.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (let i = from; i < to; i++) {
    out.set(parts[i]!, at);
    at += parts[i]!.length;
  }
  return out;
}

const CLOCK_TICKS = 100; // USER_HZ on Linux x86-64/arm64

/** utime+stime of a whole process (all threads) from /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the ")" of comm: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** Resident set size in MiB from /proc/PID/status. */
export function rssMiB(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) / 1024 : NaN;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
