/**
 * The Windows executable under Wine (test/helpers/wine.ts): it starts, says
 * its version, and serves the native protocol over stdio with a Windows
 * identity; the methods the Windows platform layer does not cover yet answer
 * -32005. A smoke test of the build, not proof for real Windows.
 */
import { afterAll, expect, test } from "bun:test";
import { decodeFrames, frame } from "../helpers/agent-process.ts";
import { runUnderWine, stopWine, WINE_CONFIG, wineAvailable } from "../helpers/wine.ts";
import { SYNC_MARKER } from "../../src/protocol/framing.ts";
import { AGENT_VERSION } from "../../src/version.ts";

afterAll(stopWine);

test.skipIf(!wineAvailable)("the Windows exe starts under Wine and says its version", async () => {
  const { exitCode, stdout } = await runUnderWine(["--version"]);
  expect(exitCode).toBe(0);
  expect(stdout.toString()).toStartWith(`kvm-manager-agent ${AGENT_VERSION}`);
}, 180_000);

test.skipIf(!wineAvailable)("over stdio it answers get_info as Windows, and -32005 for what is Linux-only so far", async () => {
  const requests = [
    { jsonrpc: "2.0", id: 1, method: "ping", params: { payload: "wine" } },
    { jsonrpc: "2.0", id: 2, method: "get_info" },
    { jsonrpc: "2.0", id: 3, method: "fsfreeze_status" },
  ];
  const input = Buffer.concat([SYNC_MARKER, ...requests.map((request) => frame(request))]);
  const { exitCode, stdout, stderr } = await runUnderWine(["--transport", "stdio", "--config", WINE_CONFIG], { stdin: input });
  expect({ exitCode, stderr: stderr.includes('"level":"error"') }).toEqual({ exitCode: 0, stderr: false });
  const replies = new Map(decodeFrames(stdout).map((reply: any) => [reply.id, reply]));
  expect(replies.get(1).result).toEqual({ pong: true, payload: "wine" });
  expect(replies.get(2).result).toMatchObject({ os_type: "windows", os_id: "windows", agent_version: AGENT_VERSION });
  expect(replies.get(3).error.code).toBe(-32005);
}, 180_000);
