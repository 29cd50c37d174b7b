/**
 * Multi-step workloads, each written once per agent as a host would drive it:
 * exec round trips and 64 MiB file transfers. Both sides move the same bytes
 * in the same 4 MiB chunks, and every transfer is checked by SHA-256.
 */
import { createHash, randomBytes } from "node:crypto";
import { withTimeout, type Endpoint } from "./raw-conn.ts";

let seq = 1_000_000_000;

/** One request, waiting for its answer. */
export async function callOnce(ep: Endpoint, call: object, timeoutMs = 120_000): Promise<any> {
  const answered = new Promise<unknown>((resolve, reject) => {
    ep.conn.onError = reject;
    ep.conn.onReply = (reply) => {
      try {
        resolve(ep.value(reply));
      } catch (error) {
        reject(error);
      }
    };
  });
  ep.conn.write(ep.encode(call, seq++));
  return withTimeout(answered, timeoutMs, `${ep.label} ${JSON.stringify(call).slice(0, 80)}`);
}

export const CHUNK_BYTES = 4 * 1024 * 1024;

/** exec of `true`, start to exit status: ours in one call; qemu-ga guest-exec then guest-exec-status polled back to back. */
export async function execOnce(ep: Endpoint, kind: "ours" | "theirs"): Promise<void> {
  if (kind === "ours") {
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
export async function guestRssMiB(ep: Endpoint, kind: "ours" | "theirs"): Promise<number> {
  const script = "grep VmRSS /proc/$PPID/status";
  let output: string;
  if (kind === "ours") {
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

/** Writes `bytes` random bytes to `path` in the guest, reads them back, checks SHA-256 both ways. */
export async function fileRoundTrip(ep: Endpoint, kind: "ours" | "theirs", path: string, bytes: number): Promise<Transfer> {
  const data = randomBytes(bytes);
  const expected = createHash("sha256").update(data).digest("hex");
  const chunks: string[] = [];
  for (let at = 0; at < bytes; at += CHUNK_BYTES) chunks.push(data.subarray(at, at + CHUNK_BYTES).toString("base64"));

  let t0 = performance.now();
  if (kind === "ours") {
    const { upload_id } = await callOnce(ep, { method: "upload_start", params: { path, overwrite: true } });
    let offset = 0;
    for (const [i, content_base64] of chunks.entries()) {
      await callOnce(ep, { method: "upload_chunk", params: { upload_id, offset, content_base64 } });
      offset += Math.min(CHUNK_BYTES, bytes - i * CHUNK_BYTES);
    }
    await callOnce(ep, { method: "upload_commit", params: { upload_id, sha256: expected } });
  } else {
    const handle = await callOnce(ep, { execute: "guest-file-open", arguments: { path, mode: "w" } });
    for (const chunk of chunks) await callOnce(ep, { execute: "guest-file-write", arguments: { handle, "buf-b64": chunk } });
    await callOnce(ep, { execute: "guest-file-close", arguments: { handle } });
  }
  const writeSeconds = (performance.now() - t0) / 1000;

  const hash = createHash("sha256");
  t0 = performance.now();
  if (kind === "ours") {
    for (let offset = 0; ; ) {
      const chunk = await callOnce(ep, { method: "copy_from_guest", params: { path, offset, length: CHUNK_BYTES } });
      hash.update(Buffer.from(chunk.content_base64, "base64"));
      offset += chunk.bytes;
      if (chunk.eof) break;
    }
  } else {
    const handle = await callOnce(ep, { execute: "guest-file-open", arguments: { path, mode: "r" } });
    for (;;) {
      const chunk = await callOnce(ep, { execute: "guest-file-read", arguments: { handle, count: CHUNK_BYTES } });
      hash.update(Buffer.from(chunk["buf-b64"], "base64"));
      if (chunk.eof) break;
    }
    await callOnce(ep, { execute: "guest-file-close", arguments: { handle } });
  }
  const readSeconds = (performance.now() - t0) / 1000;
  const got = hash.digest("hex");
  if (got !== expected) throw new Error(`${ep.label}: ${path} read back with SHA-256 ${got}, wrote ${expected}`);
  return { writeSeconds, readSeconds };
}
