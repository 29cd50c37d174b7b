/**
 * The QGA protocol, differentially: the same byte streams go to Debian's
 * qemu-ga and to our compiled agent (QGA on unix-listen, both on this
 * machine), and the replies are compared — exactly, except where they must
 * differ (guest-info's version and command list; the wording after
 * "JSON parse error, ", which comes from each side's own JSON parser).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_VERSION } from "../../src/version.ts";
import { startAgentProcess, terminate, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

const QEMU_GA = "/usr/sbin/qemu-ga";
const haveQemuGa = existsSync(QEMU_GA);

let ours: AgentProcess;
let oursNoExec: AgentProcess;
let oursBlocked: AgentProcess;
let theirsBlocked: ReturnType<typeof Bun.spawn> | null = null;
let theirs: ReturnType<typeof Bun.spawn> | null = null;
let theirsNoExec: ReturnType<typeof Bun.spawn> | null = null;
const dir = mkdtempSync(join(tmpdir(), "kma-qga-diff-"));
const oursSocket = join(dir, "ours.sock");
const theirsSocket = join(dir, "theirs.sock");
const oursNoExecSocket = join(dir, "ours-no-exec.sock");
const theirsNoExecSocket = join(dir, "theirs-no-exec.sock");
const oursBlockedSocket = join(dir, "ours-blocked.sock");
const theirsBlockedSocket = join(dir, "theirs-blocked.sock");
/** Blocked on both sides; the last name is one neither agent serves. */
const BLOCKED = ["guest-ping", "guest-get-time", "guest-sync", "guest-nonexistent"];

const qgaToml = (socket: string) =>
  `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(socket)}\nstate_dir = ${JSON.stringify(join(dir, `state-${socket.split("/").pop()}`))}\n`;
/** What the exec and file cases may touch in our agent (qemu-ga may touch anything). */
const EXEC_TOML = `[security]\nenable_exec = true\nallowed_commands = ["/bin/sh", "/bin/cat", "/bin/sleep", "/bin/true"]\nallowed_file_paths = [${JSON.stringify(dir)}]\n`;

/** Both agents of a pair get the same variables, passed explicitly (Bun.spawn ignores later process.env changes). */
function spawnQemuGa(socket: string, state: string, env: Record<string, string>, ...extra: string[]) {
  mkdirSync(state, { recursive: true });
  return Bun.spawn([QEMU_GA, "-m", "unix-listen", "-p", socket, "-t", state, "-f", join(state, "qemu-ga.pid"), "-l", join(state, "qemu-ga.log"), ...extra], {
    stdout: "ignore",
    stderr: "ignore",
    env: { ...process.env, ...env },
  });
}

/** As qemu's tests/unit/test-qga.c does: both agents read this instead of /etc/os-release. */
const OS_RELEASE_FIXTURE = `ID=qemu-ga-test
NAME=QEMU-GA
PRETTY_NAME="QEMU Guest Agent test"
VERSION="Test 1"
VERSION_ID=1
VARIANT="Unit test \\"'$\`\\\\ and \\\\\\\\ etc."
VARIANT_ID=unit-test
`;

beforeAll(async () => {
  const osRelease = join(dir, "os-release");
  writeFileSync(osRelease, OS_RELEASE_FIXTURE);
  const env = { QGA_OS_RELEASE: osRelease };
  [ours, oursNoExec, oursBlocked] = await Promise.all([
    startAgentProcess({ extraToml: qgaToml(oursSocket) + EXEC_TOML, env }),
    startAgentProcess({ extraToml: qgaToml(oursNoExecSocket), env }),
    startAgentProcess({ extraToml: `${qgaToml(oursBlockedSocket)}block_rpcs = ${JSON.stringify(BLOCKED)}\n`, env }),
  ]);
  if (haveQemuGa) {
    theirs = spawnQemuGa(theirsSocket, join(dir, "qga-state"), env);
    theirsNoExec = spawnQemuGa(theirsNoExecSocket, join(dir, "qga-state-no-exec"), env, "-b", "guest-exec,guest-exec-status");
    theirsBlocked = spawnQemuGa(theirsBlockedSocket, join(dir, "qga-state-blocked"), env, "-b", BLOCKED.join(","));
  }
  const deadline = Date.now() + 10_000;
  const ourSockets = [oursSocket, oursNoExecSocket, oursBlockedSocket];
  const sockets = haveQemuGa ? [...ourSockets, theirsSocket, theirsNoExecSocket, theirsBlockedSocket] : ourSockets;
  while (!sockets.every((socket) => existsSync(socket))) {
    if (Date.now() > deadline) throw new Error("QGA sockets did not appear");
    await Bun.sleep(20);
  }
});

afterAll(async () => {
  await ours?.stop();
  await oursNoExec?.stop();
  await oursBlocked?.stop();
  if (theirsBlocked) await terminate(theirsBlocked as never);
  if (theirs) await terminate(theirs as never);
  if (theirsNoExec) await terminate(theirsNoExec as never);
  rmSync(dir, { recursive: true, force: true });
}, STOP_HOOK_TIMEOUT_MS);

/** Sends `input` on a fresh connection and collects reply lines until `count` arrived. */
async function exchange(socket: string, input: Uint8Array | string, count: number): Promise<string[]> {
  let received = Buffer.alloc(0);
  const connection = await Bun.connect({
    unix: socket,
    socket: {
      data(_, chunk) {
        received = Buffer.concat([received, chunk]);
      },
    },
  });
  connection.write(typeof input === "string" ? Buffer.from(input) : input);
  const deadline = Date.now() + 5_000;
  const lines = () => received.toString("latin1").split("\n").slice(0, -1);
  while (lines().length < count && Date.now() < deadline) await Bun.sleep(10);
  connection.end();
  return lines();
}

/** What must be equal: parse-error wording after the prefix is each side's own. */
function comparable(line: string): string {
  return line.replace(/("desc": "JSON parse error, )[^"]*(")/, "$1…$2");
}

const CASES: [string, string | number[], number][] = [
  ["guest-ping", '{"execute":"guest-ping"}', 1],
  ["a string id is echoed", '{"execute":"guest-ping","id":"abc"}', 1],
  ["a number id is echoed", '{"execute":"guest-ping","id":7}', 1],
  ["guest-sync returns its id", '{"execute":"guest-sync","arguments":{"id":12345}}', 1],
  ["guest-sync-delimited prefixes 0xFF", '{"execute":"guest-sync-delimited","arguments":{"id":99}}', 1],
  ["an array", "[1,2]", 1],
  ["a number", "123\n", 1],
  ["a string", '"str"\n', 1],
  ["an empty object", "{}", 1],
  ["an unexpected member", '{"foo":1}', 1],
  ["execute not a string", '{"execute":12}', 1],
  ["an unknown command", '{"execute":"nope"}', 1],
  ["an unknown command with an id", '{"execute":"nope","id":"x"}', 1],
  ["an unexpected parameter", '{"execute":"guest-ping","arguments":{"foo":1}}', 1],
  ["arguments not an object", '{"execute":"guest-ping","arguments":[]}', 1],
  ["a missing parameter", '{"execute":"guest-sync"}', 1],
  ["a parameter of the wrong type", '{"execute":"guest-sync","arguments":{"id":"x"}}', 1],
  ["invalid JSON", '{"execute":"guest-ping" garbage}', 1],
  ["invalid JSON, then a good request", '{bad json}{"execute":"guest-ping"}', 2],
  ["0xFF resets the parser (and draws an error), then a good request", [0xff, ...Buffer.from('{"execute":"guest-ping","id":1}')], 2],
  ["two requests in one write", '{"execute":"guest-ping"}{"execute":"guest-ping","id":2}', 2],
  ["out-of-band control is refused (invalid-oob)", '{"execute":"guest-ping","control":{"run-oob":true}}', 1],
  ["exec-oob is refused (invalid-oob)", '{"exec-oob":"guest-ping"}', 1],
  ["guest-get-host-name", '{"execute":"guest-get-host-name"}', 1],
  ["guest-get-osinfo (the os-release fixture, quoting included)", '{"execute":"guest-get-osinfo","id":"os"}', 1],
  ["guest-get-users", '{"execute":"guest-get-users"}', 1],
  ["guest-get-vcpus", '{"execute":"guest-get-vcpus"}', 1],
  // Never change this machine's CPUs: only a CPU that does not exist.
  ["guest-set-vcpus on a CPU that does not exist", '{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":4096,"online":true}]}}', 1],
  ["guest-get-memory-blocks (directory order)", '{"execute":"guest-get-memory-blocks"}', 1],
  ["guest-get-memory-block-info", '{"execute":"guest-get-memory-block-info"}', 1],
  // Only a block that does not exist: never take this machine's memory offline.
  ["guest-set-memory-blocks on a block that does not exist", '{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":999999,"online":false}]}}', 1],
  ["an inventory command with an argument", '{"execute":"guest-get-vcpus","arguments":{"all":true}}', 1],
  // Never a valid guest-shutdown here: qemu-ga runs as root on this machine.
  ["guest-shutdown with an invalid mode", '{"execute":"guest-shutdown","arguments":{"mode":"bogus"}}', 1],
  ["guest-shutdown with a prototype name for a mode", '{"execute":"guest-shutdown","arguments":{"mode":"toString"}}', 1],
  ["guest-shutdown with an unexpected parameter", '{"execute":"guest-shutdown","arguments":{"delay":5}}', 1],
  // Never a valid guest-suspend-* here: both agents would suspend this machine. Only requests refused before they run.
  ["guest-suspend-ram with an unexpected parameter", '{"execute":"guest-suspend-ram","arguments":{"delay":5}}', 1],
  ["guest-suspend-disk with arguments that are not an object", '{"execute":"guest-suspend-disk","arguments":[]}', 1],
  ["guest-suspend-hybrid with an unexpected member", '{"execute":"guest-suspend-hybrid","delay":5}', 1],
  // Never an existing user's keys on this machine: a user that does not exist, and nobody (home /nonexistent).
  ["ssh keys of a user that does not exist", '{"execute":"guest-ssh-get-authorized-keys","arguments":{"username":"kma-no-such-user"}}', 1],
  ["ssh keys of an empty user name", '{"execute":"guest-ssh-remove-authorized-keys","arguments":{"username":"","keys":[]}}', 1],
  ["ssh keys of a user whose home does not exist", '{"execute":"guest-ssh-get-authorized-keys","arguments":{"username":"nobody"}}', 1],
  ["ssh keys added where ~/.ssh cannot be made", '{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nobody","keys":["ssh-ed25519 AAAA k"]}}', 1],
  ["ssh keys removed from a file that does not exist", '{"execute":"guest-ssh-remove-authorized-keys","arguments":{"username":"nobody","keys":["ssh-ed25519 AAAA k"]}}', 1],
  ["an ssh key that is a comment", '{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nobody","keys":["ok key","# no"]}}', 1],
  ["an ssh key with a newline", '{"execute":"guest-ssh-remove-authorized-keys","arguments":{"username":"nobody","keys":["a\\nb"]}}', 1],
  ["an ssh key that is not a string", '{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nobody","keys":["a",3]}}', 1],
  ["ssh reset that is not a boolean", '{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"nobody","keys":[],"reset":1}}', 1],
  ["ssh keys without a user name", '{"execute":"guest-ssh-get-authorized-keys","arguments":{}}', 1],
  // Never a password that could be set on this machine: only users that do not exist, and bad input.
  ["a password for a user that does not exist", '{"execute":"guest-set-user-password","arguments":{"username":"kma-no-such-user","password":"cHc=","crypted":false}}', 1],
  ["a crypted password for a user that does not exist", '{"execute":"guest-set-user-password","arguments":{"username":"kma-no-such-user","password":"JDYkeCR5","crypted":true}}', 1],
  ["a password without padding", '{"execute":"guest-set-user-password","arguments":{"username":"kma-no-such-user","password":"YQ","crypted":false}}', 1],
  ["a user name with a colon", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"cHc=","crypted":false}}', 1],
  ["a user name with a newline", '{"execute":"guest-set-user-password","arguments":{"username":"root\\nx","password":"cHc=","crypted":false}}', 1],
  ["a password with a newline (checked first)", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"YQpi","crypted":false}}', 1],
  ["a password that is not base64", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"!!!","crypted":false}}', 1],
  ["a password with base64 after its padding", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"YQ==YQ==","crypted":false}}', 1],
  ["a password without crypted", '{"execute":"guest-set-user-password","arguments":{"username":"root","password":"cHc="}}', 1],
  ["a password in base64 lines", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"YW\\nJj","crypted":false}}', 1],
  ["a password with a space", '{"execute":"guest-set-user-password","arguments":{"username":"root:x","password":"YW Jj","crypted":false}}', 1],
  ["an empty user and password", '{"execute":"guest-set-user-password","arguments":{"username":"","password":"","crypted":false}}', 1],
  // Thawed on both sides; the frozen state is compared in fsfreeze.test.ts.
  ["guest-fsfreeze-status", '{"execute":"guest-fsfreeze-status"}', 1],
  // Never a real guest-fstrim here: it would trim this machine's disks (the VM test trims a guest's).
  ["guest-fstrim with a minimum that is not a number", '{"execute":"guest-fstrim","arguments":{"minimum":"1M"}}', 1],
  ["guest-fstrim with an unexpected parameter", '{"execute":"guest-fstrim","arguments":{"path":"/"}}', 1],
];

describe.skipIf(!haveQemuGa)(`QGA replies are qemu-ga's (${QEMU_GA})`, () => {
  for (const [name, input, count] of CASES) {
    test(name, async () => {
      const bytes = typeof input === "string" ? Buffer.from(input) : Uint8Array.from(input);
      const [mine, reference] = await Promise.all([exchange(oursSocket, bytes, count), exchange(theirsSocket, bytes, count)]);
      expect(reference).toHaveLength(count);
      expect(mine.map(comparable)).toEqual(reference.map(comparable));
    });
  }

  test("guest-info has qemu-ga's shape; our version and the commands we serve", async () => {
    const [[mine], [reference]] = await Promise.all([exchange(oursSocket, '{"execute":"guest-info"}', 1), exchange(theirsSocket, '{"execute":"guest-info"}', 1)]);
    const ourInfo = JSON.parse(mine!).return;
    const theirInfo = JSON.parse(reference!).return;
    expect(Object.keys(ourInfo)).toEqual(Object.keys(theirInfo));
    expect(ourInfo.version).toBe(AGENT_VERSION);
    expect(Object.keys(ourInfo.supported_commands[0])).toEqual(Object.keys(theirInfo.supported_commands[0]));
    const theirNames = new Set(theirInfo.supported_commands.map((c: { name: string }) => c.name));
    // guest-get-load (qemu 8.2) and guest-network-get-route (9.1) are newer than Debian's qemu-ga 7.2; every other command of ours is one of its.
    const newer = new Set(["guest-get-load", "guest-network-get-route"]);
    for (const command of ourInfo.supported_commands) if (!newer.has(command.name)) expect(theirNames.has(command.name)).toBe(true);
    // The commands that answer nothing on success are listed alike (success-response false).
    for (const name of ["guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"]) {
      const theirs = theirInfo.supported_commands.find((c: { name: string }) => c.name === name);
      expect(theirs["success-response"]).toBe(false);
      expect(ourInfo.supported_commands.find((c: { name: string }) => c.name === name)).toEqual(theirs);
    }
    expect(ourInfo.supported_commands.map((c: { name: string }) => c.name)).toEqual([
      "guest-sync-delimited",
      "guest-sync",
      "guest-ping",
      "guest-get-host-name",
      "guest-get-time",
      "guest-set-time",
      "guest-get-timezone",
      "guest-get-osinfo",
      "guest-get-users",
      "guest-get-vcpus",
      "guest-set-vcpus",
      "guest-get-load",
      "guest-network-get-interfaces",
      "guest-network-get-route",
      "guest-get-cpustats",
      "guest-get-diskstats",
      "guest-get-fsinfo",
      "guest-get-disks",
      "guest-get-memory-blocks",
      "guest-get-memory-block-info",
      "guest-set-memory-blocks",
      "guest-shutdown",
      "guest-suspend-disk",
      "guest-suspend-ram",
      "guest-suspend-hybrid",
      "guest-exec",
      "guest-exec-status",
      "guest-file-open",
      "guest-file-close",
      "guest-file-read",
      "guest-file-write",
      "guest-file-seek",
      "guest-file-flush",
      "guest-fstrim",
      "guest-fsfreeze-status",
      "guest-fsfreeze-freeze",
      "guest-fsfreeze-freeze-list",
      "guest-fsfreeze-thaw",
      "guest-set-user-password",
      "guest-ssh-get-authorized-keys",
      "guest-ssh-add-authorized-keys",
      "guest-ssh-remove-authorized-keys",
      "guest-info",
    ]);
  });

  /** guest-exec on both sides, then guest-exec-status until exited; the pid is the only thing that differs. */
  async function execBoth(args: object, beforeStatus?: (pids: number[]) => void): Promise<string[][]> {
    const request = JSON.stringify({ execute: "guest-exec", arguments: args });
    const started = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
    const pids = started.map(([line]) => JSON.parse(line!).return.pid as number);
    for (const [line] of started) expect(line).toMatch(/^\{"return": \{"pid": \d+\}\}$/);
    beforeStatus?.(pids);
    return Promise.all(
      [oursSocket, theirsSocket].map(async (socket, i) => {
        const status = JSON.stringify({ execute: "guest-exec-status", arguments: { pid: pids[i] } });
        for (let attempt = 0; attempt < 200; attempt++) {
          const [line] = await exchange(socket, status, 1);
          if (!line!.includes('"exited": false')) return [line!, (await exchange(socket, status, 1))[0]!];
          await Bun.sleep(20);
        }
        throw new Error("never exited");
      }),
    );
  }

  test("guest-exec + guest-exec-status: exit code, captured output, record dropped after the exited answer", async () => {
    const [mine, reference] = await execBoth({ path: "/bin/sh", arg: ["-c", "echo out; echo err >&2; exit 3"], "capture-output": true });
    expect(mine).toEqual(reference!);
    expect(reference![1]).toBe(`{"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}`);
  });

  test("guest-exec: input-data and env", async () => {
    const [mine, reference] = await execBoth({ path: "/bin/sh", arg: ["-c", 'cat; echo "A=$A"'], env: ["A=1"], "input-data": "aGVsbG8K", "capture-output": true });
    expect(mine).toEqual(reference!);
  });

  test("guest-exec without capture-output returns no data", async () => {
    const [mine, reference] = await execBoth({ path: "/bin/sh", arg: ["-c", "echo hidden"] });
    expect(mine).toEqual(reference!);
  });

  test("a process ended by a signal reports its number", async () => {
    const [mine, reference] = await execBoth({ path: "/bin/sleep", arg: ["30"] }, (pids) => {
      for (const pid of pids) process.kill(pid, "SIGTERM");
    });
    expect(mine![0]).toBe('{"return": {"signal": 15, "exited": true}}');
    expect(mine).toEqual(reference!);
  });

  test("guest-file-*: handles, reads, eof, seeks, appends and every error, as qemu-ga answers them", async () => {
    /** The same calls on one agent, against its own copy of the file; paths are masked in the replies. */
    async function script(socket: string, file: string): Promise<string[]> {
      writeFileSync(file, "hello world");
      const replies: string[] = [];
      const call = async (execute: string, args: object) => {
        const [line] = await exchange(socket, JSON.stringify({ execute, arguments: args }), 1);
        replies.push(line!.replaceAll(file, "<FILE>").replaceAll(dir, "<DIR>"));
        return JSON.parse(line!);
      };
      const { return: handle } = await call("guest-file-open", { path: file });
      for (const count of [5, 6, 6]) await call("guest-file-read", { handle, count });
      await call("guest-file-seek", { handle, offset: 2, whence: "set" });
      await call("guest-file-seek", { handle, offset: -1, whence: 2 });
      await call("guest-file-read", { handle });
      await call("guest-file-write", { handle, "buf-b64": "eA==" }); // read-only: EBADF
      await call("guest-file-write", { handle, "buf-b64": "not base64!" });
      await call("guest-file-write", { handle: 99999, "buf-b64": "not base64!" });
      await call("guest-file-flush", { handle });
      await call("guest-file-close", { handle });
      await call("guest-file-close", { handle });
      const { return: appending } = await call("guest-file-open", { path: file, mode: "a+" });
      await call("guest-file-write", { handle: appending, "buf-b64": "ISE=", count: 1 });
      await call("guest-file-seek", { handle: appending, offset: 0, whence: "set" });
      await call("guest-file-read", { handle: appending, count: 100 });
      await call("guest-file-close", { handle: appending });
      await call("guest-file-open", { path: `${dir}/nowhere/x` });
      await call("guest-file-open", { path: file, mode: "z" });
      await call("guest-file-read", { handle: 99999 });
      await call("guest-file-seek", { handle: 99999, offset: 0, whence: "bogus" });
      return replies;
    }
    const mine = await script(oursSocket, join(dir, "ours.txt"));
    const reference = await script(theirsSocket, join(dir, "theirs.txt"));
    expect(mine).toEqual(reference);
    expect(await Bun.file(join(dir, "ours.txt")).text()).toBe("hello world!");
  });

  test("guest-file-open refuses what the file policy forbids, and no handle is spent on it", async () => {
    const [refused] = await exchange(oursSocket, JSON.stringify({ execute: "guest-file-open", arguments: { path: "/etc/passwd" } }), 1);
    expect(refused).toContain("failed to open file '/etc/passwd' (mode: 'r'): Path '/etc/passwd' refused: it is outside allowed_file_paths");
  });

  test("guest-exec-status of an unknown pid, and a wrongly typed argument", async () => {
    for (const request of ['{"execute":"guest-exec-status","arguments":{"pid":1}}', '{"execute":"guest-exec","arguments":{"path":"/bin/true","arg":5}}']) {
      const [mine, reference] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
      expect(mine).toEqual(reference);
    }
  });

  test("block_rpcs answers as qemu-ga -b does, guest-sync included; other commands are untouched", async () => {
    for (const request of ['{"execute":"guest-ping"}', '{"execute":"guest-get-time"}', '{"execute":"guest-sync","arguments":{"id":1}}', '{"execute":"guest-get-host-name"}']) {
      const [mine, reference] = await Promise.all([exchange(oursBlockedSocket, request, 1), exchange(theirsBlockedSocket, request, 1)]);
      expect(mine).toEqual(reference);
    }
    const [[info]] = await Promise.all([exchange(oursBlockedSocket, '{"execute":"guest-info"}', 1)]);
    const disabled = JSON.parse(info!).return.supported_commands.filter((c: { enabled: boolean }) => !c.enabled).map((c: { name: string }) => c.name);
    expect(disabled.sort()).toEqual(["guest-exec", "guest-exec-status", "guest-get-time", "guest-ping", "guest-sync"]);
  });

  test("exec switched off answers as qemu-ga -b does, and guest-info says so", async () => {
    const request = '{"execute":"guest-exec","arguments":{"path":"/bin/true"}}';
    const [mine, reference] = await Promise.all([exchange(oursNoExecSocket, request, 1), exchange(theirsNoExecSocket, request, 1)]);
    expect(mine).toEqual(reference);
    expect(reference![0]).toBe('{"error": {"class": "CommandNotFound", "desc": "Command guest-exec has been disabled"}}');
    const [[info]] = await Promise.all([exchange(oursNoExecSocket, '{"execute":"guest-info"}', 1)]);
    const flags = JSON.parse(info!).return.supported_commands.filter((c: { name: string }) => c.name.startsWith("guest-exec"));
    expect(flags).toEqual([
      { name: "guest-exec", enabled: false, "success-response": true },
      { name: "guest-exec-status", enabled: false, "success-response": true },
    ]);
  });

  test("guest-network-get-interfaces: the same interfaces, addresses and hardware addresses, in the same order", async () => {
    const request = '{"execute":"guest-network-get-interfaces"}';
    const [[mine], [reference]] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
    // Traffic counters move between the two calls; their presence and names must not.
    const counters = (line: string) => line.replace(/("[rt]x-(bytes|packets|errs|dropped)": )\d+/g, "$1N");
    expect(counters(mine!)).toBe(counters(reference!));
    expect(mine).toContain('"name": "lo"');
  });

  test("both agents really read the os-release fixture (QGA_OS_RELEASE reached them)", async () => {
    const [line] = await exchange(oursSocket, '{"execute":"guest-get-osinfo"}', 1);
    expect(JSON.parse(line!).return).toMatchObject({ id: "qemu-ga-test", name: "QEMU-GA", "variant-id": "unit-test", variant: "Unit test \"'$`\\ and \\\\ etc." });
  });

  test("guest-get-cpustats and guest-get-diskstats: the same entries and fields in the same order", async () => {
    // Counters move between the two calls; every number is masked, names, keys and order must match.
    const masked = (line: string) => line.replace(/(": )\d+/g, "$1N");
    for (const execute of ["guest-get-cpustats", "guest-get-diskstats"]) {
      const request = JSON.stringify({ execute });
      const [[mine], [reference]] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
      expect(masked(mine!)).toBe(masked(reference!));
    }
  });

  test("guest-get-fsinfo: the same mounts, disks and addresses (this machine is a VM with a virtio disk)", async () => {
    const request = '{"execute":"guest-get-fsinfo"}';
    const [[mine], [reference]] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
    // Usage moves while tests write files; everything else must be identical — but the serial: qemu-ga
    // asks udev for it, and this machine runs no udev, while we read it from sysfs (libvirt matches
    // guest disks by serial, so we report it where qemu-ga could not).
    const usage = (line: string) => line.replace(/("(used|total)-bytes": )\d+/g, "$1N");
    const withoutSerial = (line: string) => (reference!.includes('"serial"') ? line : line.replace(/"serial": "[^"]*", /g, ""));
    expect(usage(withoutSerial(mine!))).toBe(usage(reference!));
    // On a VM like CI's (root on a virtio disk with a serial), the address and serial are there:
    const serial = existsSync("/sys/block/vda/serial") ? readFileSync("/sys/block/vda/serial", "utf8").trim() : "";
    if (serial) expect(mine).toContain(`"serial": "${serial}"`);
    if (existsSync("/sys/block/vda")) expect(mine).toContain('"bus-type": "virtio"');
  });

  test("guest-get-disks: the same disks with the same addresses (serial aside, as for fsinfo)", async () => {
    const request = '{"execute":"guest-get-disks"}';
    const [[mine], [reference]] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
    const withoutSerial = (line: string) => (reference!.includes('"serial"') ? line : line.replace(/"serial": "[^"]*", /g, ""));
    expect(withoutSerial(mine!)).toBe(reference!);
  });

  test("guest-get-timezone, in UTC and with both agents started under TZ=Europe/Berlin and America/New_York", async () => {
    const request = '{"execute":"guest-get-timezone"}';
    const [mine, reference] = await Promise.all([exchange(oursSocket, request, 1), exchange(theirsSocket, request, 1)]);
    expect(mine).toEqual(reference);
    for (const tz of ["Europe/Berlin", "America/New_York"]) {
      const zoneDir = join(dir, `tz-${tz.replace("/", "-")}`);
      const oursTz = join(zoneDir, "ours.sock");
      const theirsTz = join(zoneDir, "theirs.sock");
      mkdirSync(zoneDir, { recursive: true });
      const agent = await startAgentProcess({ extraToml: qgaToml(oursTz), env: { TZ: tz } });
      const reference = spawnQemuGa(theirsTz, join(zoneDir, "state"), { TZ: tz });
      try {
        while (!existsSync(oursTz) || !existsSync(theirsTz)) await Bun.sleep(20);
        const [zoneMine, zoneTheirs] = await Promise.all([exchange(oursTz, request, 1), exchange(theirsTz, request, 1)]);
        expect(zoneMine).toEqual(zoneTheirs);
        expect(zoneMine[0]).toMatch(/"zone": "(CET|CEST|EST|EDT)"/);
      } finally {
        await agent.stop();
        await terminate(reference as never);
      }
    }
  });

  test("guest-get-time: nanoseconds since the epoch, the same clock as qemu-ga's", async () => {
    const [[mine], [reference]] = await Promise.all([exchange(oursSocket, '{"execute":"guest-get-time"}', 1), exchange(theirsSocket, '{"execute":"guest-get-time"}', 1)]);
    const ns = (line: string) => BigInt(/"return": (\d+)/.exec(line)![1]!);
    const skew = ns(mine!) - ns(reference!);
    expect(skew < 0n ? -skew : skew).toBeLessThan(5_000_000_000n);
    expect(ns(mine!) % 1000n).toBe(0n); // microsecond precision, as qemu-ga
  });
});

test("the QGA port answers guest-sync-delimited with 0xFF first, as libvirt expects", async () => {
  const lines = await exchange(oursSocket, Buffer.concat([Uint8Array.of(0xff), Buffer.from('{"execute":"guest-sync-delimited","arguments":{"id":4242}}')]), 2);
  expect(lines[0]).toBe('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\\\uFFFD\'"}}');
  expect(lines[1]).toBe('\u00ff{"return": 4242}');
});
