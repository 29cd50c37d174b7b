/**
 * Message authentication end to end: the compiled agent with [security]
 * hmac_key_file refuses what is not signed with its key, and audits it; the
 * client and the CLI sign when given the key; a captured request cannot be
 * played again; a key file anyone could read stops the agent at start.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AgentClient } from "../../src/client/client.ts";
import { signRequest } from "../../src/security/hmac.ts";
import { connectClient, eventually, makeTempDir, RawConnection, runBinary, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

const dir = makeTempDir("kma-hmac-e2e-");
const key = Buffer.from("a host's secret of more than sixteen bytes");
const keyFile = join(dir, "hmac.key");
writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
let agent: AgentProcess;

beforeAll(async () => {
  agent = await startAgentProcess({ extraToml: `[security]\nhmac_key_file = ${JSON.stringify(keyFile)}\nhmac_window_seconds = 30\n`, hmacKey: key });
});

afterAll(() => agent?.stop(), STOP_HOOK_TIMEOUT_MS);

test("signed calls work; unsigned ones and ones signed with another key are refused with -32008 and audited", async () => {
  const client = await connectClient(agent);
  expect(await client.ping({ payload: "signed" })).toEqual({ pong: true, payload: "signed" });
  expect((await client.getInfo()).methods.length).toBeGreaterThan(10);
  client.close();

  for (const hmacKey of [undefined, Buffer.from("not the agent's key, but long enough")]) {
    const stranger = await AgentClient.connect(agent.socketPath, { timeoutMs: 5_000, hmacKey });
    const refused = stranger.ping({});
    await expect(refused).rejects.toMatchObject({ code: -32008, data: { reason: hmacKey ? "bad_mac" : "missing" } });
    stranger.close();
  }
  const audit = await eventually(() => {
    const lines = readFileSync(agent.auditPath, "utf8").trim().split("\n").map((line) => JSON.parse(line));
    const refusals = lines.filter((line) => line.code === -32008);
    return refusals.length >= 2 ? refusals : undefined;
  });
  expect(audit.map((line) => [line.method, line.outcome])).toEqual([
    ["ping", "error"],
    ["ping", "error"],
  ]);
});

test("a signed request captured on the wire is refused when played again", async () => {
  const connection = await RawConnection.connect(agent.socketPath);
  const signed = signRequest(key, { jsonrpc: "2.0", id: "once", method: "ping", params: {} });
  expect(await connection.request(signed)).toEqual({ jsonrpc: "2.0", id: "once", result: { pong: true } });
  expect(await connection.request(signed)).toMatchObject({ id: "once", error: { code: -32008, message: "Unauthenticated: this nonce was already used", data: { reason: "replayed" } } });
  const stale = signRequest(key, { jsonrpc: "2.0", id: "old", method: "ping", params: {} }, Date.now() - 60_000);
  expect(await connection.request(stale)).toMatchObject({ id: "old", error: { code: -32008, data: { reason: "stale" } } });
  connection.close();
});

test("the CLI signs with --hmac-key-file", async () => {
  const signed = await runBinary(["ping", "--socket", agent.socketPath, "--hmac-key-file", keyFile, "--json"]);
  expect(signed.exitCode).toBe(0);
  expect(JSON.parse(signed.stdout)).toEqual({ pong: true });
  const unsigned = await runBinary(["ping", "--socket", agent.socketPath]);
  expect(unsigned.exitCode).toBe(1);
  expect(unsigned.stderr).toContain("this agent requires signed requests");
});

test("a key file others can read stops the agent at start, and --check-config says why", async () => {
  const open = join(dir, "open.key");
  writeFileSync(open, key);
  chmodSync(open, 0o644);
  const config = join(dir, "open.toml");
  writeFileSync(config, `[security]\nhmac_key_file = ${JSON.stringify(open)}\n[qga]\nenabled = false\n`);
  for (const args of [["--check-config"], ["--transport", "unix-listen", "--path", join(dir, "never.sock")]]) {
    const result = await runBinary(["--config", config, ...args]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toBe(`kvm-manager-agent: hmac_key_file ${open} must have mode 0600, not 0644\n`);
  }
});
