/**
 * `npm start`: the agent's main job on a host, for a newcomer. Starts the
 * compiled agent on a temporary unix socket — the same kind of socket QEMU
 * exposes for a VM's virtio-serial port — and drives it with the host CLI.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../src/client/client.ts";
import { binaryPath } from "./build.ts";

const binary = binaryPath();
const dir = mkdtempSync(join(tmpdir(), "kvm-manager-agent-demo-"));
const socket = join(dir, "agent.sock");
const config = join(dir, "config.toml");
const audit = join(dir, "audit.jsonl");
// On a host there is no org.qemu.guest_agent.0: the QGA protocol goes on a unix socket too.
await Bun.write(config, `[qga]\ntype = "unix-listen"\npath = "${join(dir, "qga.sock")}"\n[logging]\nformat = "text"\naudit_file = "${audit}"\n`);

console.log(`$ ${binary} --transport unix-listen --path ${socket} --config ${config} &`);
const agent = Bun.spawn([binary, "--transport", "unix-listen", "--path", socket, "--config", config], {
  stdout: "inherit",
  stderr: "inherit",
});

try {
  await waitForSocket();
  for (const args of [["--version"], ["methods"], ["ping", "--socket", socket, '{"payload":"hello from the host"}'], ["get_info", "--socket", socket], ["get_metrics", "--socket", socket], ["call", "get_info", "--socket", socket, "--json"], ["ping", "--socket", socket, '{"colour":"red"}']]) {
    console.log(`\n$ kvm-manager-agent ${args.map((a) => (a.includes(" ") || a.includes("{") ? `'${a}'` : a)).join(" ")}`);
    const run = Bun.spawnSync([binary, ...args], { stdout: "inherit", stderr: "inherit" });
    if (args[0] === "ping" && args.at(-1)!.includes("colour")) console.log(`(exit ${run.exitCode}: invalid params are refused with a clear error)`);
    else if (run.exitCode !== 0) throw new Error(`kvm-manager-agent ${args.join(" ")} exited ${run.exitCode}`);
  }
  await Bun.sleep(300); // the audit log flushes every 200 ms
  console.log(`\n$ cat ${audit}`);
  console.log((await Bun.file(audit).text()).trimEnd());
  console.log("\nThe agent works. In a VM it runs on /dev/virtio-ports/org.kvmmanager.agent.0 instead (see README).");
} finally {
  agent.kill("SIGTERM");
  await agent.exited;
  rmSync(dir, { recursive: true, force: true });
}

async function waitForSocket(): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const client = await AgentClient.connect(socket);
      await client.waitReady({ timeoutMs: 5_000 });
      client.close();
      return;
    } catch (error) {
      if (Date.now() > deadline || agent.exitCode !== null) throw new Error(`the agent did not come up: ${(error as Error).message}`);
      await Bun.sleep(50);
    }
  }
}
