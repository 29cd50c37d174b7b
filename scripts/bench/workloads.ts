/**
 * Multi-step workloads, each written once per agent as a host would drive it:
 * exec round trips and 64 MiB file transfers. Both sides move the same bytes
 * with the same 4 MiB in flight, each as its hosts move files (TRANSFER), and
 * every transfer is checked by SHA-256.
 */
import { fullGC } from "bun:jsc";
import { createHash, randomBytes } from "node:crypto";
import { DEFAULT_CHUNK_BYTES, DEFAULT_PIPELINE } from "../../src/client/transfer.ts";
import { decodeBase64Into } from "../../src/protocol/base64.ts";
import { Base64Text, withTimeout, type Endpoint } from "./raw-conn.ts";

let seq = 1_000_000_000;

/** One request, waiting for its answer. */
export async function callOnce(ep: Endpoint, call: object, timeoutMs = 120_000): Promise<any> {
  const [result] = await callWindow(ep, [call], 1, timeoutMs);
  return result;
}

/**
 * Sends `calls` with at most `window` outstanding, the next one as soon as an
 * answer arrives; returns the results in request order, or hands each to
 * `onResult` in request order as soon as it can and keeps none (a file read's
 * chunks would otherwise pile up in the client: 90 MB of strings for 64 MiB).
 */
export async function callWindow(ep: Endpoint, calls: object[], window: number, timeoutMs = 300_000, onResult?: (value: any) => void): Promise<any[]> {
  const first = seq;
  seq += calls.length;
  const results = new Array<unknown>(calls.length);
  let delivered = 0;
  let sent = 0;
  let answered = 0;
  const done = new Promise<void>((resolve, reject) => {
    ep.conn.onError = reject;
    ep.conn.onReply = (reply) => {
      try {
        const { seq: id, value } = ep.decode(reply);
        results[id - first] = value;
        if (onResult) {
          for (; delivered < calls.length && delivered in results; delivered++) {
            onResult(results[delivered]);
            delete results[delivered];
          }
        }
        if (++answered === calls.length) return resolve();
        if (sent < calls.length) ep.send(calls[sent]!, first + sent++);
      } catch (error) {
        reject(error);
      }
    };
  });
  while (sent < Math.min(window, calls.length)) ep.send(calls[sent]!, first + sent++);
  await withTimeout(done, timeoutMs, `${ep.label} ${JSON.stringify(calls[0]).slice(0, 80)}`);
  return results;
}

/**
 * How each protocol moves a file, as its hosts drive it, with the same bytes in flight (4 MiB):
 * our client (src/client/transfer.ts) sends 2 MiB chunks two at a time; qemu-ga gets 4 MiB
 * requests one at a time, as hosts drive it — with two 4 MiB guest-file-write requests in
 * flight over virtio-serial, qemu-ga 7.2 stopped answering (seen in this bench's VM).
 */
const TRANSFER = {
  native: { window: DEFAULT_PIPELINE, chunkBytes: DEFAULT_CHUNK_BYTES },
  qga: { window: 1, chunkBytes: 4 * 1024 * 1024 },
} as const;

/** exec of `true`, start to exit status: natively in one call; over QGA guest-exec then guest-exec-status polled back to back. */
export async function execOnce(ep: Endpoint): Promise<void> {
  if (ep.protocol === "native") {
    const result = await callOnce(ep, { method: "exec", params: { command: "true" } });
    if (result.exit_code !== 0) throw new Error(`exec true: ${JSON.stringify(result)}`);
    return;
  }
  const { pid } = await callOnce(ep, { execute: "guest-exec", arguments: { path: "/bin/true", "capture-output": true } });
  for (;;) {
    const status = await callOnce(ep, { execute: "guest-exec-status", arguments: { pid } });
    if (status.exited) {
      if (status.exitcode !== 0) throw new Error(`guest-exec /bin/true: ${JSON.stringify(status)}`);
      return;
    }
  }
}

/** The agent's own resident memory in the guest, read by a child it runs (the child's parent is the agent). */
export async function guestRssMiB(ep: Endpoint): Promise<number> {
  const script = "grep VmRSS /proc/$PPID/status";
  let output: string;
  if (ep.protocol === "native") {
    const result = await callOnce(ep, { method: "exec", params: { command: "sh", args: ["-c", script] } });
    output = Buffer.from(result.stdout_base64, "base64").toString();
  } else {
    const { pid } = await callOnce(ep, { execute: "guest-exec", arguments: { path: "/bin/sh", arg: ["-c", script], "capture-output": true } });
    let status;
    do status = await callOnce(ep, { execute: "guest-exec-status", arguments: { pid } });
    while (!status.exited);
    output = Buffer.from(status["out-data"] ?? "", "base64").toString();
  }
  const match = /VmRSS:\s+(\d+) kB/.exec(output);
  if (!match) throw new Error(`${ep.label}: no VmRSS in ${JSON.stringify(output)}`);
  return Number(match[1]) / 1024;
}

export interface Transfer {
  writeSeconds: number;
  readSeconds: number;
}

/** `bytes` random bytes as base64 chunks of `chunkBytes`, and their SHA-256; the bytes themselves are not kept. */
function randomChunks(bytes: number, chunkBytes: number): { chunks: Base64Text[]; expected: string } {
  const data = randomBytes(bytes);
  const chunks: Base64Text[] = [];
  for (let at = 0; at < bytes; at += chunkBytes) chunks.push(new Base64Text(data.subarray(at, at + chunkBytes).toString("base64")));
  return { chunks, expected: createHash("sha256").update(data).digest("hex") };
}

/**
 * Writes `bytes` random bytes to `path` in the guest, reads them back, checks SHA-256 both ways.
 * The client collects its garbage before each timed direction (JSC's fullGC, which keeps the freed memory for
 * reuse): with the last round's 64 MiB and 90 MB of chunks still on its heap, the engine let each read reply's
 * string go to fresh memory, and the client's CPU in a 64 MiB read moved between 0.07 and 0.74 s.
 */
export async function fileRoundTrip(ep: Endpoint, path: string, bytes: number): Promise<Transfer> {
  const { window, chunkBytes } = TRANSFER[ep.protocol];
  let { chunks, expected } = randomChunks(bytes, chunkBytes);
  const chunkCount = chunks.length;
  fullGC();
  let t0 = performance.now();
  if (ep.protocol === "native") {
    const { upload_id } = await callOnce(ep, { method: "upload_start", params: { path, overwrite: true } });
    await callWindow(ep, chunks.map((content_base64, i) => ({ method: "upload_chunk", params: { upload_id, offset: i * chunkBytes, content_base64 } })), window);
    await callOnce(ep, { method: "upload_commit", params: { upload_id, sha256: expected } });
  } else {
    const handle = await callOnce(ep, { execute: "guest-file-open", arguments: { path, mode: "w" } });
    await callWindow(ep, chunks.map((chunk) => ({ execute: "guest-file-write", arguments: { handle, "buf-b64": chunk } })), window);
    await callOnce(ep, { execute: "guest-file-close", arguments: { handle } });
  }
  const writeSeconds = (performance.now() - t0) / 1000;
  chunks = [];
  fullGC();

  // Both read the file's chunks back in order; the size is known, as a host knows it from its own write.
  const hash = createHash("sha256");
  const absorb = absorber(hash, chunkBytes);
  t0 = performance.now();
  if (ep.protocol === "native") {
    const reads = Array.from({ length: chunkCount }, (_, i) => ({ method: "copy_from_guest", params: { path, offset: i * chunkBytes, length: chunkBytes } }));
    await callWindow(ep, reads, window, undefined, (chunk) => absorb(chunk.content_base64));
  } else {
    const handle = await callOnce(ep, { execute: "guest-file-open", arguments: { path, mode: "r" } });
    const reads = Array.from({ length: chunkCount }, () => ({ execute: "guest-file-read", arguments: { handle, count: chunkBytes } }));
    await callWindow(ep, reads, window, undefined, (chunk) => absorb(chunk["buf-b64"]));
    await callOnce(ep, { execute: "guest-file-close", arguments: { handle } });
  }
  const readSeconds = (performance.now() - t0) / 1000;
  const got = hash.digest("hex");
  if (got !== expected) throw new Error(`${ep.label}: ${path} read back with SHA-256 ${got}, wrote ${expected}`);
  return { writeSeconds, readSeconds };
}

/**
 * Feeds each chunk's bytes to `hash`, decoded into one kept buffer (a fresh one per chunk costs page faults here);
 * a chunk of more than the `chunkBytes` asked for does not fit it and throws.
 */
function absorber(hash: ReturnType<typeof createHash>, chunkBytes: number): (base64: string) => void {
  const scratch = new Uint8Array(chunkBytes);
  return (base64) => hash.update(decodeBase64Into(base64, scratch));
}
