/**
 * Attack suites against the COMPILED agent over unix sockets, native and QGA
 * (guest-file-open/read/write under [security] allowed_file_paths), one
 * describe per attack class. Every attempt is real and must be refused with
 * the right error and leave nothing behind. Nothing outside this test's temp
 * dir is written: the "outside" targets are scratch files beside the root;
 * real /etc files are only read (to prove they stay unchanged and never leak).
 *
 * Where a class is also pinned down in-process, see test/files.test.ts
 * ("path policy", run with openat2 and with the realpath fallback) and
 * test/exec.test.ts ("command resolution", "environment", "policy refusals").
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AgentRpcError, type AgentClient } from "../../src/client/client.ts";
import { FORBIDDEN_ENV } from "../../src/exec/policy.ts";
import { connectClient, eventually, makeTempDir, runBinary, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";
import { startFlipRacer } from "../helpers/flip-racer.ts";

const FORBIDDEN = -32001;
const NOT_FOUND = -32002;
const INVALID_PARAMS = -32602;

const SECRET = `OUTSIDE-SECRET-${process.pid}`;
const INSIDE = "inside content";

let scratch: string;
let root: string; // allowed_file_paths
let outside: string; // beside the root: must never be read or written through the agent
let bin: string; // allowlisted programs of the exec agent
let agent: AgentProcess;
let client: AgentClient;
let qgaSocket: string;
let etcPasswd: string; // /etc/passwd as it was before the tests, to compare after

function outsideListing(): string[] {
  return readdirSync(outside).sort();
}

beforeAll(async () => {
  scratch = makeTempDir("kma-attacks-");
  root = join(scratch, "root");
  outside = join(scratch, "outside");
  bin = join(scratch, "bin");
  for (const dir of [root, outside, bin, join(scratch, "evil-path")]) mkdirSync(dir);
  writeFileSync(join(outside, "secret"), SECRET);
  writeFileSync(join(root, "inside"), INSIDE);
  etcPasswd = readFileSync("/etc/passwd", "utf8");
  // A program that prints each argument on a line of its own, between brackets.
  writeFileSync(join(bin, "argv"), '#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n');
  chmodSync(join(bin, "argv"), 0o755);
  // An `echo` that must never run: it is first on the agent's own PATH.
  writeFileSync(join(scratch, "evil-path", "echo"), "#!/bin/sh\necho PWNED\n");
  chmodSync(join(scratch, "evil-path", "echo"), 0o755);
  qgaSocket = join(scratch, "qga.sock");
  agent = await startAgentProcess({
    extraToml: [
      "[qga]",
      'type = "unix-listen"',
      `path = ${JSON.stringify(qgaSocket)}`,
      "[security]",
      `allowed_file_paths = [${JSON.stringify(root)}]`,
      "enable_exec = true",
      `allowed_commands = ["echo", "true", ${JSON.stringify(join(bin, "argv"))}]`,
    ].join("\n"),
    env: { PATH: `${join(scratch, "evil-path")}:${process.env.PATH ?? "/usr/bin:/bin"}` },
  });
  client = await connectClient(agent, 30_000);
}, 60_000);

afterAll(async () => {
  client?.close();
  expect(await agent?.stop()).toBe(0);
  rmSync(scratch, { recursive: true, force: true });
}, STOP_HOOK_TIMEOUT_MS);

// ---------------------------------------------------------------- helpers

async function refused(call: Promise<unknown>, code: number): Promise<AgentRpcError> {
  const error = await call.then(
    (value) => new Error(`expected error ${code}, got ${JSON.stringify(value).slice(0, 300)}`),
    (caught: unknown) => caught,
  );
  if (!(error instanceof AgentRpcError)) throw error;
  expect({ code: error.code, message: error.message }).toMatchObject({ code });
  expect(error.message).not.toContain(SECRET);
  return error;
}

const b64 = (text: string) => Buffer.from(text).toString("base64");
const text = (base64: string) => Buffer.from(base64, "base64").toString("utf8");

const readNative = (path: string) => client.call("copy_from_guest", { path });
const writeNative = (path: string, content = "written") => client.call("copy_to_guest", { path, content_base64: b64(content) });

/** One QGA command on its own connection; the parsed reply. */
async function qga(execute: string, args?: object): Promise<any> {
  let received = "";
  const socket = await Bun.connect({
    unix: qgaSocket,
    socket: {
      data(_, chunk) {
        received += chunk.toString();
      },
    },
  });
  socket.write(JSON.stringify(args ? { execute, arguments: args } : { execute }));
  await eventually(() => received.includes("\n"), 20_000);
  socket.end();
  return JSON.parse(received);
}

/** guest-file-open that must fail: its GenericError desc. */
async function qgaOpenRefused(path: string, mode: string): Promise<string> {
  const reply = await qga("guest-file-open", { path, mode });
  expect(reply.error?.class).toBe("GenericError");
  expect(reply.return).toBeUndefined();
  const desc: string = reply.error.desc;
  expect(desc.startsWith(`failed to open file '${path}' (mode: '${mode}'): `)).toBe(true);
  return desc;
}

/** guest-file-open + read everything + close, or the open's error desc. */
async function qgaReadAll(path: string): Promise<{ content: string } | { error: string }> {
  const open = await qga("guest-file-open", { path, mode: "r" });
  if (open.error) return { error: open.error.desc };
  const handle = open.return;
  try {
    const read = await qga("guest-file-read", { handle, count: 65536 });
    return { content: text(read.return["buf-b64"]) };
  } finally {
    await qga("guest-file-close", { handle });
  }
}

/** guest-file-open(mode) + write + close; true when it went through. */
async function qgaWrite(path: string, mode: string, content: string): Promise<boolean> {
  const open = await qga("guest-file-open", { path, mode });
  if (open.error) return false;
  const handle = open.return;
  await qga("guest-file-write", { handle, "buf-b64": b64(content) });
  await qga("guest-file-close", { handle });
  return true;
}

/** After each class: the outside dir holds only its secret, unchanged; /etc/passwd unchanged. */
function expectOutsideUntouched(): void {
  expect(outsideListing()).toEqual(["secret"]);
  expect(readFileSync(join(outside, "secret"), "utf8")).toBe(SECRET);
  expect(statSync(join(outside, "secret")).nlink).toBe(1);
  expect(readFileSync("/etc/passwd", "utf8")).toBe(etcPasswd);
}

function rootLeftovers(): string[] {
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.name.includes(".kma-")) found.push(join(dir, entry.name));
      if (entry.isDirectory()) walk(join(dir, entry.name));
    }
  };
  walk(root);
  return found;
}

// ================================================================ files

describe("path traversal: '..' in every position", () => {
  // In-process: files.test.ts "path policy" > "'..' components are refused, even when they would land inside the root".
  const paths = () => [
    `${root}/../outside/secret`,
    `${root}/sub/../../outside/secret`,
    `${root}/..`,
    `${root}/inside/..`,
    `/..${root}/inside`,
    `${root}/./../outside/secret`,
    `${root}//..//outside/secret`,
  ];

  test("native reads and writes are FORBIDDEN (dot_dot), even where the path would land inside", async () => {
    for (const path of paths()) {
      expect((await refused(readNative(path), FORBIDDEN)).data).toMatchObject({ reason: "dot_dot" });
      expect((await refused(writeNative(path), FORBIDDEN)).data).toMatchObject({ reason: "dot_dot" });
    }
    expectOutsideUntouched();
    expect(rootLeftovers()).toEqual([]);
  });

  test("QGA guest-file-open refuses every mode", async () => {
    for (const path of paths()) {
      for (const mode of ["r", "w", "a", "r+"]) expect(await qgaOpenRefused(path, mode)).toContain("'..' components are not allowed");
    }
    expectOutsideUntouched();
  });
});

describe("path traversal: encoded forms are taken literally, never decoded", () => {
  // The policy never decodes anything: a name is bytes for the kernel. Only here.
  const encoded = ["%2e%2e", "..%2f", "%2e%2e%2f", "..%c0%af", "\u00c0\u00af", "\u2024\u2024", "\uff0e\uff0e", "..\\", "%252e%252e"];

  test("reads through them find nothing (there is no such directory), never the outside file", async () => {
    for (const form of encoded) {
      const path = `${root}/${form}/outside/secret`;
      await refused(readNative(path), NOT_FOUND);
      expect(await qgaReadAll(path)).toEqual({ error: `failed to open file '${path}' (mode: 'r'): No such file or directory` });
    }
  });

  test("writes to them create a file of exactly that name inside the root, nothing elsewhere", async () => {
    mkdirSync(join(root, "enc"));
    for (const [index, form] of encoded.entries()) {
      const name = `${form}outside${form}secret-${index}`;
      const native = await writeNative(`${root}/enc/${name}`, "native");
      expect(native.path).toBe(`${root}/enc/${name}`);
      expect(await qgaWrite(`${root}/enc/q-${name}`, "w", "qga")).toBe(true);
      expect(readFileSync(join(root, "enc", name), "utf8")).toBe("native");
      expect(readFileSync(join(root, "enc", `q-${name}`), "utf8")).toBe("qga");
    }
    expect(readdirSync(join(root, "enc"))).toHaveLength(encoded.length * 2);
    expectOutsideUntouched();
    expect(rootLeftovers()).toEqual([]);
  });
});

describe("symlink escapes", () => {
  // In-process, with both resolvers: files.test.ts "path policy" > "a symlink in a parent directory that escapes the
  // root is refused", "writes never follow a symlink at the final component", "reads follow a final symlink only ...".
  beforeAll(() => {
    symlinkSync(outside, join(root, "abs-dir")); // parent, absolute
    symlinkSync("../outside", join(root, "rel-dir")); // parent, relative
    symlinkSync(join(outside, "secret"), join(root, "abs-file")); // final, absolute
    symlinkSync("../outside/secret", join(root, "rel-file")); // final, relative
    symlinkSync("/etc/passwd", join(root, "etc-file"));
    symlinkSync(join(root, "inside"), join(root, "inside-link")); // stays inside: followed for reads
  });

  test("reads through a parent or final symlink that leaves the root are FORBIDDEN (outside_allowed_paths)", async () => {
    for (const path of [`${root}/abs-dir/secret`, `${root}/rel-dir/secret`, `${root}/abs-file`, `${root}/rel-file`, `${root}/etc-file`]) {
      expect((await refused(readNative(path), FORBIDDEN)).data).toMatchObject({ reason: "outside_allowed_paths" });
      expect(await qgaReadAll(path)).toEqual({ error: `failed to open file '${path}' (mode: 'r'): Path '${path}' refused: it is outside allowed_file_paths` });
    }
    expect(text((await readNative(`${root}/inside-link`)).content_base64)).toBe(INSIDE);
  });

  test("writes: a parent symlink out is FORBIDDEN; a final symlink is never followed, wherever it points", async () => {
    for (const path of [`${root}/abs-dir/new`, `${root}/rel-dir/new`]) {
      expect((await refused(writeNative(path), FORBIDDEN)).data).toMatchObject({ reason: "outside_allowed_paths" });
      for (const mode of ["w", "a", "r+"]) await qgaOpenRefused(path, mode);
    }
    for (const link of ["abs-file", "rel-file", "etc-file", "inside-link"]) {
      expect((await refused(writeNative(`${root}/${link}`), FORBIDDEN)).data).toMatchObject({ reason: "symlink" });
      for (const mode of ["w", "a"]) await qgaOpenRefused(`${root}/${link}`, mode);
    }
    expect(readFileSync(join(root, "inside"), "utf8")).toBe(INSIDE);
    expectOutsideUntouched();
    expect(rootLeftovers()).toEqual([]);
  });
});

describe("hardlink escapes", () => {
  // In-process, with both resolvers: files.test.ts "path policy" > "hardlinks: ...".
  // The rule (src/files/paths.ts refuseHardlinked): a regular file with more
  // than one link is never read or written in place, since its other name may
  // be outside the roots. Atomic writes replace the name, so they are allowed.
  test("a hardlink inside the root to an outside file is never read, nor opened by QGA in any mode", async () => {
    const link = join(root, "hardlink");
    linkSync(join(outside, "secret"), link);
    try {
      expect((await refused(readNative(link), FORBIDDEN)).data).toMatchObject({ reason: "hardlink" });
      for (const mode of ["r", "r+", "w", "a"]) expect(await qgaOpenRefused(link, mode)).toContain("it has 2 hard links");
      expect(readFileSync(join(outside, "secret"), "utf8")).toBe(SECRET); // "w" did not truncate it.
      // copy_to_guest replaces the name inside the root; the outside file keeps its content.
      await writeNative(link, "replaced");
      expect(readFileSync(link, "utf8")).toBe("replaced");
    } finally {
      rmSync(link, { force: true });
    }
    expectOutsideUntouched();
  });
});

describe("a symlink swapped in between check and open", () => {
  // In-process, with both resolvers: files.test.ts "path policy" > "a racer flipping a parent ..." and "a parent swapped
  // for a symlink to the outside during an upload ..." (deterministic: the commit lands in the directory opened at start).
  test("a racer flips directories between a real dir and symlinks to / and to an outside dir: nothing outside is ever read or written (copy, archive, QGA)", async () => {
    // race-r is a real dir or a symlink to / (only read through: race-r/etc/passwd); race-w a real dir or a
    // symlink to a scratch dir outside the root. The flipped name is never the last component: O_NOFOLLOW
    // alone would stop that; it takes resolving beneath the root (or the fd re-check) to stop this.
    const outsideRace = join(scratch, "outside-race");
    mkdirSync(join(outsideRace, "sub"), { recursive: true });
    writeFileSync(join(outsideRace, "sub", "secret"), SECRET);
    mkdirSync(join(root, "race-r", "etc"), { recursive: true });
    writeFileSync(join(root, "race-r", "etc", "passwd"), INSIDE);
    mkdirSync(join(root, "race-w", "sub"), { recursive: true });
    writeFileSync(join(root, "race-w", "sub", "secret"), INSIDE);
    symlinkSync("/", join(root, "link-r"));
    symlinkSync(outsideRace, join(root, "link-w"));
    mkdirSync(join(scratch, "tree"));
    writeFileSync(join(scratch, "tree", "t"), INSIDE);
    expect(Bun.spawnSync(["tar", "czf", join(scratch, "tree.tar.gz"), "-C", join(scratch, "tree"), "."]).exitCode).toBe(0);
    const archive = readFileSync(join(scratch, "tree.tar.gz")).toString("base64");
    // race-r / race-w are always there, exchanged atomically with link-r / link-w.
    const racer = startFlipRacer(root, [
      ["race-r", "link-r"],
      ["race-w", "link-w"],
    ]);
    const seen = { ok: 0, refused: 0 };
    const replies: string[] = [];
    try {
      const until = Date.now() + 2_500;
      for (let round = 0; Date.now() < until; round++) {
        const attempts = await Promise.allSettled([
          readNative(`${root}/race-r/etc/passwd`).then((r) => text(r.content_base64)),
          readNative(`${root}/race-w/sub/secret`).then((r) => text(r.content_base64)),
          writeNative(`${root}/race-w/sub/new-${round}`, "native").then(() => "written"),
          client.call("copy_archive_to_guest", { dir: `${root}/race-w/sub/tree-${round}`, archive_base64: archive }).then(() => "written"),
          qgaReadAll(`${root}/race-r/etc/passwd`).then((r) => ("content" in r ? r.content : Promise.reject(new Error(r.error)))),
          qgaReadAll(`${root}/race-w/sub/secret`).then((r) => ("content" in r ? r.content : Promise.reject(new Error(r.error)))),
          qgaWrite(`${root}/race-w/sub/q-${round}`, "w", "qga").then((ok) => (ok ? "written" : Promise.reject(new Error("refused")))),
        ]);
        for (const attempt of attempts) {
          if (attempt.status === "fulfilled") {
            seen.ok++;
            replies.push(attempt.value);
          } else {
            seen.refused++;
            replies.push(String(attempt.reason));
          }
        }
      }
    } finally {
      racer.kill("SIGKILL");
      await racer.exited;
    }
    console.log(`race: ${seen.ok} attempts went through inside the root, ${seen.refused} were refused`);
    expect(seen.ok + seen.refused).toBeGreaterThan(0);
    for (const reply of replies) {
      expect(reply).not.toContain(SECRET);
      expect(reply).not.toContain("root:x:0:0");
      if (!reply.startsWith("Error") && !reply.startsWith("AgentRpcError")) expect(["written", INSIDE]).toContain(reply);
    }
    expectOutsideUntouched();
    expect(readdirSync(outsideRace, { recursive: true }).sort()).toEqual(["sub", join("sub", "secret")]);
    expect(readFileSync(join(outsideRace, "sub", "secret"), "utf8")).toBe(SECRET);
    expect(readFileSync("/etc/passwd", "utf8")).toBe(etcPasswd);
    expect(rootLeftovers()).toEqual([]);
  }, 60_000);
});

describe("/proc/self/root and /proc/self/fd", () => {
  // Magic links: RESOLVE_NO_MAGICLINKS beneath the root, realpath + the root check otherwise. Only here.
  test("/proc/self/root/<outside> and /proc/self/fd/N are FORBIDDEN; /proc/self/root/<root>/x is the file inside", async () => {
    for (const path of [`/proc/self/root${outside}/secret`, "/proc/self/root/etc/passwd", ...Array.from({ length: 16 }, (_, n) => `/proc/self/fd/${n}`)]) {
      expect((await refused(readNative(path), FORBIDDEN)).data).toMatchObject({ reason: "outside_allowed_paths" });
      expect((await refused(writeNative(path), FORBIDDEN)).data).toMatchObject({ reason: "outside_allowed_paths" });
      expect(await qgaOpenRefused(path, "r")).toContain("outside allowed_file_paths");
      expect(await qgaOpenRefused(path, "w")).toContain("outside allowed_file_paths");
    }
    expect(text((await readNative(`/proc/self/root${root}/inside`)).content_base64)).toBe(INSIDE);
    expectOutsideUntouched();
  });

  test("symlinks inside the root to /proc/self/root/... and /proc/self/fd/N (magic links) are refused", async () => {
    symlinkSync(`/proc/self/root${outside}`, join(root, "proc-root"));
    symlinkSync("/proc/self/fd/0", join(root, "proc-fd"));
    symlinkSync("../../../../../../../../proc/self/root/etc/passwd", join(root, "proc-rel"));
    for (const path of [`${root}/proc-root/secret`, `${root}/proc-fd`, `${root}/proc-rel`]) {
      await refused(readNative(path), FORBIDDEN);
      expect((await qgaReadAll(path)) as object).toHaveProperty("error");
    }
    await refused(writeNative(`${root}/proc-root/new`), FORBIDDEN);
    expectOutsideUntouched();
  });
});

describe("very long paths", () => {
  // In-process: files.test.ts "path policy" > "paths above PATH_MAX or with a component above NAME_MAX ...".
  test("above NAME_MAX, above PATH_MAX in bytes, above the schema's 4096 characters: clear errors, nothing created", async () => {
    const longName = `${root}/${"n".repeat(256)}`;
    expect((await refused(writeNative(longName), INVALID_PARAMS)).message).toContain("NAME_MAX (255)");
    const longBytes = `${root}/${Array.from({ length: 30 }, () => "é".repeat(70)).join("/")}`;
    expect((await refused(readNative(longBytes), INVALID_PARAMS)).message).toContain("PATH_MAX (4095)");
    const longChars = `${root}/${"a/".repeat(3000)}f`;
    expect((await refused(readNative(longChars), INVALID_PARAMS)).message).toContain("4096");
    for (const path of [longName, longBytes, longChars]) {
      expect(await qgaOpenRefused(path, "w")).toEndWith("File name too long");
    }
    expect(readdirSync(root).some((name) => name.startsWith("nnnn") || name === "a" || name.startsWith("é"))).toBe(false);
  });
});

describe("NUL bytes", () => {
  // In-process: files.test.ts "path policy" > "a NUL byte is refused"; exec.test.ts "policy refusals" > "NUL bytes in args".
  test("a NUL anywhere in the path is refused before any system call", async () => {
    for (const path of [`${root}/inside\0`, `${root}/inside\0/../../outside/secret`, `${root}\0/x`, `\0${root}/inside`]) {
      expect((await refused(readNative(path), FORBIDDEN)).data).toMatchObject({ reason: "nul_byte" });
      expect((await refused(writeNative(path), FORBIDDEN)).data).toMatchObject({ reason: "nul_byte" });
      expect(await qgaOpenRefused(path, "w")).toContain("the path contains a NUL byte");
    }
    expect(readdirSync(root).filter((name) => name.startsWith("inside")).sort()).toEqual(["inside", "inside-link"]);
  });
});

describe("FIFOs and devices", () => {
  // In-process: files.test.ts "path policy" > "a FIFO is refused at once ...", "a device node is refused ...".
  test("a FIFO and character devices are refused at once for reading and writing (no hang)", async () => {
    const fifo = join(root, "fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const devices = process.getuid?.() === 0 ? ["null", "zero"] : [];
    for (const [name, minor] of [["null", "3"], ["zero", "5"]]) {
      if (devices.includes(name!)) expect(Bun.spawnSync(["mknod", join(root, name!), "c", "1", minor!]).exitCode).toBe(0);
    }
    for (const path of [fifo, ...devices.map((name) => join(root, name))]) {
      expect((await refused(readNative(path), FORBIDDEN)).data).toMatchObject({ reason: "not_regular_file" });
      expect((await refused(writeNative(path), FORBIDDEN)).data).toMatchObject({ reason: "not_regular_file" });
      for (const mode of ["r", "w", "a", "r+"]) {
        const desc = await qgaOpenRefused(path, mode);
        expect(desc.endsWith("not a regular file") || desc.endsWith("No such device or address")).toBe(true);
      }
    }
    expect(statSync(fifo).isFIFO()).toBe(true);
    expect(rootLeftovers()).toEqual([]);
  });
});

// ================================================================ exec

describe("exec allowlist bypass: relative paths", () => {
  // In-process: exec.test.ts "command resolution (pure)" > "relative paths with a slash are refused ...", "policy refusals" > "relative paths are refused".
  test("./x, x/y and ../x are refused whatever the cwd, even when they name an allowed file", async () => {
    for (const command of ["./argv", "bin/argv", "../bin/argv", "./echo"]) {
      const error = await refused(client.exec({ command, cwd: command === "../bin/argv" ? root : scratch }, {}), FORBIDDEN);
      expect(error.message).toContain("relative paths are not allowed");
    }
  });
});

describe("exec allowlist bypass: PATH", () => {
  // In-process: exec.test.ts "command resolution (pure)" > "a name is looked up in SAFE_PATH order, whatever PATH the agent has".
  test("names are looked up in the safe path only, never the agent's PATH, and a request may not set PATH", async () => {
    const echo = await client.exec({ command: "echo", args: ["safe"] }, {});
    expect(text(echo.stdout_base64)).toBe("safe\n"); // Not the evil-path echo first on the agent's PATH.
    for (const name of ["PATH", "path", "Path"]) {
      expect((await refused(client.exec({ command: "echo", env: { [name]: join(scratch, "evil-path") } }, {}), FORBIDDEN)).message).toContain(name);
    }
    await refused(client.exec({ command: join(scratch, "evil-path", "echo") }, {}), FORBIDDEN);
  });
});

describe("exec allowlist bypass: symlinks and copies", () => {
  // In-process: exec.test.ts "policy refusals" > "a symlink elsewhere to a binary outside the allowlist is refused",
  // "a symlink to an allowed binary is allowed (the same file runs)".
  // Commands are compared by real path: a symlink to an allowed binary runs
  // that same file, as the allowlisted path (argv[0] included), so nothing new
  // runs. A symlink or copy of anything else is a different real file: refused.
  test("a symlink from elsewhere to an allowed binary runs the allowed binary; to anything else, or a copy, is refused", async () => {
    symlinkSync(join(bin, "argv"), join(scratch, "alias"));
    symlinkSync("/bin/ls", join(scratch, "ls-named-echo"));
    copyFileSync(join(bin, "argv"), join(scratch, "argv-copy"));
    chmodSync(join(scratch, "argv-copy"), 0o755);
    const viaLink = await client.exec({ command: join(scratch, "alias"), args: ["x"] }, {});
    expect(text(viaLink.stdout_base64)).toBe("[x]\n");
    await refused(client.exec({ command: join(scratch, "ls-named-echo") }, {}), FORBIDDEN);
    await refused(client.exec({ command: join(scratch, "argv-copy") }, {}), FORBIDDEN);
  });
});

describe("exec allowlist bypass: loader and start-up environment variables", () => {
  // In-process: exec.test.ts "environment (pure)" > "loader, glibc, PATH, shell and interpreter start-up variables are refused ...".
  test("every LD_* and every other code-loading variable is refused, in any case, before anything runs", async () => {
    const names = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG", "LD_BIND_NOW", "LD_ANYTHING_NEW", "ld_preload", "Ld_Audit", ...FORBIDDEN_ENV];
    const marker = join(scratch, "ran");
    for (const name of names) {
      const error = await refused(client.exec({ command: join(bin, "argv"), args: [marker], env: { [name]: "x" } }, {}), FORBIDDEN);
      expect(error.message).toContain(`'${name}'`);
    }
    expect(existsSync(marker)).toBe(false);
  });
});

describe("exec allowlist bypass: argument injection", () => {
  // In-process: exec.test.ts "policy refusals" > "an allowlisted script runs, with args passed as they are (no shell)".
  test("options, shell metacharacters and odd bytes reach the program verbatim, one argv entry each (no shell)", async () => {
    const pwned = join(scratch, "pwned");
    const args = ["--help", "-rf", "--", `; touch ${pwned}`, `$(touch ${pwned})`, `\`touch ${pwned}\``, "a b", "'quoted'", '"dq"', "| cat", "&& id", "*", "~", "$HOME", "line\nbreak", "", "-"];
    const result = await client.exec({ command: join(bin, "argv"), args, cwd: scratch }, {});
    expect(result.exit_code).toBe(0);
    expect(text(result.stdout_base64)).toBe(args.map((arg) => `[${arg}]\n`).join(""));
    expect(existsSync(pwned)).toBe(false);
    const echoed = await client.exec({ command: "echo", args: ["-e", "a\\tb", `$(touch ${pwned})`] }, {});
    expect(text(echoed.stdout_base64)).toBe(`a\tb $(touch ${pwned})\n`); // echo's own -e, not a shell's.
    expect(existsSync(pwned)).toBe(false);
  });
});

describe("exec allowlist bypass over QGA: guest-exec takes the same policy", () => {
  test("relative paths, PATH and loader variables are refused; arguments reach argv verbatim", async () => {
    const relative = await qga("guest-exec", { path: "./argv" });
    expect(relative.error?.class).toBe("GenericError");
    expect(relative.error.desc).toContain("relative paths are not allowed");
    for (const variable of ["LD_PRELOAD", "PATH", "GCONV_PATH"]) {
      const reply = await qga("guest-exec", { path: join(bin, "argv"), env: [`${variable}=${scratch}`] });
      expect(reply.error?.class).toBe("GenericError");
      expect(reply.error.desc).toContain(variable);
    }
    const args = ["--version", `$(touch ${join(scratch, "pwned")})`, "a;b", "|", ""];
    const started = await qga("guest-exec", { path: join(bin, "argv"), arg: args, "capture-output": true });
    let status: any;
    await eventually(async () => {
      status = (await qga("guest-exec-status", { pid: started.return.pid })).return;
      return status.exited;
    }, 20_000);
    expect(status.exitcode).toBe(0);
    expect(text(status["out-data"])).toBe(args.map((arg) => `[${arg}]\n`).join(""));
    expect(existsSync(join(scratch, "pwned"))).toBe(false);
  });
});

describe("the working directory", () => {
  test("a bunfig.toml or .env there is never loaded: a preload it names does not run, in the agent nor in the host CLI", async () => {
    // A standalone Bun executable loads both from its working directory unless built not to; a bunfig.toml
    // preload then ran its code in the agent, as root, wherever an admin started it.
    const dir = join(scratch, "hostile-cwd");
    mkdirSync(dir);
    const marker = join(dir, "preload-ran");
    writeFileSync(join(dir, "preload.js"), `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "ran");`);
    writeFileSync(join(dir, "bunfig.toml"), 'preload = ["./preload.js"]\n');
    writeFileSync(join(dir, ".env"), "BUN_OPTIONS=--preload ./preload.js\n");
    for (const args of [["--version"], ["methods"]]) {
      const run = await runBinary(args, { cwd: dir });
      expect({ args, exitCode: run.exitCode, stderr: run.stderr }).toEqual({ args, exitCode: 0, stderr: "" });
      expect(existsSync(marker)).toBe(false);
    }
  });
});

describe("after all the attacks", () => {
  test("the agent holds no file descriptor into the scratch dir (every directory and file fd was closed)", () => {
    const targets = readdirSync(`/proc/${agent.pid}/fd`).map((fd) => {
      try {
        return readlinkSync(`/proc/${agent.pid}/fd/${fd}`);
      } catch {
        return ""; // Closed meanwhile.
      }
    });
    expect(targets.filter((target) => target.startsWith(scratch))).toEqual([]);
  });
});
