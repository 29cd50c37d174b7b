/**
 * The rest of the native methods on a real guest, over real virtio-serial:
 * streamed exec, small atomic copies, an aborted upload, and an archive
 * swapped in atomically. (ping, get_info, exec, push/pull, metrics, users and
 * power have their own VM tests.)
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient, AgentRpcError } from "../../src/client/client.ts";
import type { NotificationParams } from "../../src/schema/methods.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

let vm: TestVm;
let client: AgentClient;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()) });
  client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 20_000 });
  await client.waitReady({ timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  client?.close();
  await vm?.stop();
});

const text = (base64: string) => Buffer.from(base64, "base64").toString();

test("exec_start streams output as notifications, exec_status long-polls, exec_kill stops a process", async () => {
  const chunks: NotificationParams<"exec_output">[] = [];
  const exits: NotificationParams<"exec_exit">[] = [];
  const stopOutput = client.onNotification("exec_output", (p) => chunks.push(p));
  const stopExit = client.onNotification("exec_exit", (p) => exits.push(p));
  try {
    const { handle } = await client.execStart({ command: "sh", args: ["-c", "echo one; sleep 0.2; echo two >&2; echo three"], stream: true });
    const status = await client.execStatus({ handle, wait_ms: 20_000 }, { timeoutMs: 30_000 });
    expect(status.running).toBe(false);
    expect(text(status.result!.stdout_base64)).toBe("one\nthree\n");
    const deadline = Date.now() + 10_000;
    while (exits.length === 0 && Date.now() < deadline) await Bun.sleep(20);
    const streamed = (stream: "stdout" | "stderr") => chunks.filter((c) => c.handle === handle && c.stream === stream).map((c) => text(c.data_base64)).join("");
    expect(streamed("stdout")).toBe("one\nthree\n");
    expect(streamed("stderr")).toBe("two\n");
    expect(exits).toEqual([{ handle, result: status.result! }]);

    const sleeper = await client.execStart({ command: "sleep", args: ["600"] });
    expect(await client.execKill({ handle: sleeper.handle, signal: "SIGKILL" })).toMatchObject({ running: true });
    const killed = await client.execStatus({ handle: sleeper.handle, wait_ms: 10_000 }, { timeoutMs: 20_000 });
    expect(killed.result).toMatchObject({ exit_code: null, signal: "SIGKILL" });
  } finally {
    stopOutput();
    stopExit();
  }
}, 60_000);

test("copy_to_guest writes atomically and refuses what policy forbids; copy_from_guest reads it back", async () => {
  const written = await client.copyToGuest({ path: "/tmp/hello.txt", content_base64: Buffer.from("hello guest\n").toString("base64"), mode: "0600" });
  expect(written).toMatchObject({ path: "/tmp/hello.txt", bytes: 12 });
  const back = await client.copyFromGuest({ path: "/tmp/hello.txt" });
  expect(text(back.content_base64)).toBe("hello guest\n");
  expect(back).toMatchObject({ bytes: 12, size: 12, eof: true, sha256: written.sha256 });
  for (const path of ["/etc/passwd", "/tmp/../etc/passwd", "relative.txt"]) {
    const error = await client.copyToGuest({ path, content_base64: "eA==" }).catch((e) => e);
    expect(error).toBeInstanceOf(AgentRpcError);
    expect([-32001, -32602]).toContain(error.code);
  }
}, 60_000);

test("an aborted upload leaves the old file and no temp file behind", async () => {
  await client.copyToGuest({ path: "/tmp/keep.txt", content_base64: Buffer.from("old\n").toString("base64") });
  const { upload_id } = await client.uploadStart({ path: "/tmp/keep.txt" });
  await client.uploadChunk({ upload_id, offset: 0, content_base64: Buffer.from("new and half").toString("base64") });
  expect(await client.uploadAbort({ upload_id })).toEqual({ upload_id, aborted: true });
  expect(text((await client.copyFromGuest({ path: "/tmp/keep.txt" })).content_base64)).toBe("old\n");
  const listing = await client.exec({ command: "sh", args: ["-c", "ls -a /tmp"] });
  expect(text(listing.stdout_base64).split("\n").filter((name) => name.includes("keep.txt"))).toEqual(["keep.txt"]);
}, 60_000);

test("copy_archive_to_guest unpacks a .tar.gz into place, and refuses an archive with an escaping entry", async () => {
  const local = mkdtempSync(join(tmpdir(), "kma-vm-archive-"));
  try {
    mkdirSync(join(local, "app", "conf"), { recursive: true });
    writeFileSync(join(local, "app", "conf", "app.toml"), "port = 8080\n");
    writeFileSync(join(local, "app", "README"), "hello\n");
    expect(Bun.spawnSync(["tar", "czf", join(local, "app.tgz"), "-C", join(local, "app"), "."]).exitCode).toBe(0);
    const archive = Buffer.from(await Bun.file(join(local, "app.tgz")).arrayBuffer()).toString("base64");
    expect(await client.copyArchiveToGuest({ dir: "/tmp/app", archive_base64: archive })).toMatchObject({ dir: "/tmp/app", files: 2, replaced: false });
    expect(text((await client.copyFromGuest({ path: "/tmp/app/conf/app.toml" })).content_base64)).toBe("port = 8080\n");

    expect(Bun.spawnSync(["tar", "czf", join(local, "evil.tgz"), "-C", local, "--transform", "s,^app,../escape,", "app/README"]).exitCode).toBe(0);
    const evil = Buffer.from(await Bun.file(join(local, "evil.tgz")).arrayBuffer()).toString("base64");
    const error = await client.copyArchiveToGuest({ dir: "/tmp/app", archive_base64: evil }).catch((e) => e);
    expect(error.code).toBe(-32001);
    expect(JSON.stringify(error.data)).toContain("../escape/README");
    // The earlier tree is untouched.
    expect(text((await client.copyFromGuest({ path: "/tmp/app/README" })).content_base64)).toBe("hello\n");
  } finally {
    rmSync(local, { recursive: true, force: true });
  }
}, 60_000);
