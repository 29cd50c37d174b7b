/**
 * The isa-serial transport's loop, with the OS half replaced by scripted
 * lines. The real device is exercised by test/termios.test.ts and
 * test/e2e/isa-serial.test.ts (ptys) and test/vm/isa-serial.vm.ts (a UART).
 */
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../src/log/logger.ts";
import { IsaSerialTransport, type SerialLine } from "../src/transport/isa-serial/isa-serial.ts";
import type { ConnectionHandler } from "../src/transport/transport.ts";

/** A line whose input the test feeds, hangs up or breaks. */
class ScriptedLine implements SerialLine {
  written: number[] = [];
  closed = false;
  private controller: ReadableStreamDefaultController<Uint8Array> | null = null;

  readStream(): ReadableStream<Uint8Array> {
    return new ReadableStream({ start: (c) => void (this.controller = c) });
  }
  writeSome(bytes: Uint8Array): number {
    this.written.push(...bytes);
    return bytes.length;
  }
  close(): void {
    this.closed = true;
  }

  send(bytes: number[]): void {
    this.controller!.enqueue(Uint8Array.from(bytes));
  }
  hangUp(): void {
    this.controller!.close();
  }
  fail(message: string): void {
    this.controller!.error(new Error(message));
  }
}

const until = async (condition: () => boolean, timeoutMs = 3000) => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await Bun.sleep(5);
  }
};

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

function start(open: (path: string) => SerialLine) {
  const dir = mkdtempSync(join(tmpdir(), "kma-tty-"));
  const path = join(dir, "ttyS1");
  writeFileSync(path, "");
  const lines: string[] = [];
  const transport = new IsaSerialTransport(path, createLogger("debug", "text", (line) => lines.push(line)), open);
  cleanups.push(() => transport.close(), () => rmSync(dir, { recursive: true, force: true }));
  const sessions: { data: number[]; closed: boolean; reply(bytes: number[]): void }[] = [];
  void transport.start((connection): ConnectionHandler => {
    const session = { data: [] as number[], closed: false, reply: (bytes: number[]) => connection.send(Uint8Array.from(bytes)) };
    sessions.push(session);
    return { onData: (chunk) => session.data.push(...chunk), onInputEnd: async () => {}, onClose: () => void (session.closed = true) };
  });
  return { path, lines, sessions };
}

test("one session for as long as the line is up: bytes both ways", async () => {
  const line = new ScriptedLine();
  const { sessions } = start(() => line);
  await until(() => sessions.length === 1);
  line.send([1, 2]);
  line.send([3]);
  await until(() => sessions[0]!.data.length === 3);
  sessions[0]!.reply([9, 8, 7]);
  expect(line.written).toEqual([9, 8, 7]);
  expect(sessions[0]!.closed).toBe(false);
});

test("a hang-up ends the session, closes the line and opens it again; the warning is logged once while it repeats", async () => {
  const opened: ScriptedLine[] = [];
  const { lines, sessions } = start(() => {
    const line = new ScriptedLine();
    opened.push(line);
    return line;
  });
  await until(() => sessions.length === 1);
  opened[0]!.send([1]);
  opened[0]!.hangUp();
  await until(() => sessions.length === 2);
  expect(sessions[0]!.closed).toBe(true);
  expect(opened[0]!.closed).toBe(true);
  // Hung up again at once, twice: no bytes flowed, so no new warning.
  opened[1]!.hangUp();
  await until(() => opened.length === 3);
  opened[2]!.hangUp();
  await until(() => opened.length === 4);
  expect(lines.filter((l) => l.includes("serial line hung up; reopening it"))).toHaveLength(1);
  expect(lines.filter((l) => l.includes("info port open"))).toHaveLength(1);
  // The line that came back carries a fresh session.
  opened[3]!.send([5]);
  await until(() => sessions[3]!.data.length === 1);
});

test("a failed read reopens the line and says why; a line that cannot be opened is retried and logged once", async () => {
  const opened: ScriptedLine[] = [];
  let attempts = 0;
  const { lines, sessions } = start(() => {
    if (++attempts <= 3) throw new Error("tcgetattr() failed: ENOTTY (errno 25)");
    const line = new ScriptedLine();
    opened.push(line);
    return line;
  });
  await until(() => sessions.length === 1);
  expect(lines.filter((l) => l.includes("cannot open serial device: tcgetattr() failed: ENOTTY"))).toHaveLength(1);
  opened[0]!.fail("EIO: i/o error, read");
  await until(() => sessions.length === 2);
  expect(sessions[0]!.closed).toBe(true);
  expect(lines.some((l) => l.includes("serial line failed; reopening it: EIO: i/o error, read"))).toBe(true);
});

test("a missing device is waited for and logged once", async () => {
  const line = new ScriptedLine();
  let opens = 0;
  const { path, lines, sessions } = start(() => (opens++, line));
  rmSync(path);
  await until(() => sessions.length === 1); // opened before the removal was seen
  line.hangUp();
  await until(() => lines.some((l) => l.includes("serial device not present yet")));
  await Bun.sleep(200);
  expect(opens).toBe(1);
  expect(lines.filter((l) => l.includes("serial device not present yet"))).toHaveLength(1);
  writeFileSync(path, "");
  await until(() => opens === 2);
});
