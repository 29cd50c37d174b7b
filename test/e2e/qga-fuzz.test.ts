/**
 * The QGA port under 10,000 random and malformed messages (seeded, so a
 * failure reproduces): the agent must never crash, never hang, and never lose
 * its place — every marker request interleaved with the garbage is answered,
 * with its id, in order. A 0xFF before each marker resynchronises the parser,
 * as libvirt does, whatever state the garbage left it in.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { makeTempDir, readRss, startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 20261121);
let agent: AgentProcess;
let socket: string;

beforeAll(async () => {
  socket = join(makeTempDir("kma-qga-fuzz-"), "qga.sock");
  agent = await startAgentProcess({ extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(socket)}\nstate_dir = ${JSON.stringify(join(socket, "..", "state"))}\n` });
});

afterAll(() => agent?.stop());

function prng(seed: number) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test(`10,000 malformed QGA messages (seed ${SEED}): no crash, no hang, every marker answered in order`, async () => {
  const random = prng(SEED);
  const int = (n: number) => Math.floor(random() * n);
  const pick = <T>(items: T[]) => items[int(items.length)]!;
  const COMMANDS = ["guest-ping", "guest-info", "guest-sync", "guest-get-time", "guest-exec", "guest-file-read", "guest-shutdown", "nope", "", "__proto__"];
  const garbage = (): string | Uint8Array => {
    switch (int(10)) {
      case 0:
        return Uint8Array.from({ length: int(200) }, () => int(255)); // random bytes (0xFF left to the markers)
      case 1:
        return "{".repeat(1 + int(3000)); // unbalanced nesting
      case 2:
        return "}".repeat(1 + int(5)) + "]";
      case 3:
        return `{"execute":"${pick(COMMANDS)}","arguments":${pick(['{"id":"x"}', "[]", "5", '{"handle":-1}', '{"mode":"bogus"}', '{"path":"/etc/shadow"}', "{"])}}`;
      case 4:
        return `"${"\\".repeat(int(10))}unterminated`;
      case 5:
        return `${int(1e9)} true null -1e400 "s" `;
      case 6:
        return JSON.stringify({ execute: pick(COMMANDS), id: pick([1, "a", null, [1], { x: 1 }]), extra: int(9) });
      case 7:
        return `{"execute":"guest-ping","arguments":${"[".repeat(int(500))}`;
      case 8:
        return Uint8Array.of(0xc3, 0x28, 0x7b, 0x22, 0xe2, 0x82); // invalid UTF-8 inside and around a message
      default:
        return `{"execute":"guest-sync","arguments":{"id":${int(100)}},"id":"q${int(100)}"}`;
    }
  };

  let received = Buffer.alloc(0);
  const connection = await Bun.connect({
    unix: socket,
    socket: { data: (_, chunk) => void (received = Buffer.concat([received, chunk])) },
  });
  const rssBefore = readRss(agent.pid);
  const MARKER_EVERY = 50;
  for (let i = 0; i < 10_000; i++) {
    const piece = garbage();
    connection.write(typeof piece === "string" ? Buffer.from(piece) : piece);
    if ((i + 1) % MARKER_EVERY === 0) {
      const id = 1_000_000 + i;
      // As libvirt resynchronises: 0xFF, then a delimited sync with a fresh id; its reply follows a 0xFF.
      received = Buffer.alloc(0);
      connection.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }))]));
      const deadline = Date.now() + 10_000;
      for (;;) {
        const at = received.lastIndexOf(0xff);
        const rest = at >= 0 ? received.subarray(at + 1).toString() : "";
        const line = rest.slice(0, rest.indexOf("\n") + 1);
        if (line !== "" && JSON.parse(line).return === id) break;
        if (Date.now() > deadline) throw new Error(`marker ${id} was not answered (seed ${SEED}, message ${i})`);
        await Bun.sleep(2);
      }
    }
  }
  connection.end();
  expect(agent.proc.exitCode).toBeNull();
  // Still serving a fresh connection, and memory did not run away.
  let reply = "";
  const fresh = await Bun.connect({ unix: socket, socket: { data: (_, chunk) => void (reply += chunk.toString()) } });
  fresh.write('{"execute":"guest-ping","id":"after"}');
  const until = Date.now() + 5_000;
  while (!reply.includes("\n") && Date.now() < until) await Bun.sleep(5);
  fresh.end();
  expect(reply).toBe('{"return": {}, "id": "after"}\n');
  expect(readRss(agent.pid) - rssBefore).toBeLessThan(64 * 1024 * 1024);
  expect(agent.stderr()).not.toMatch(/ level=error|"level":"error"/);
}, 120_000);
