/**
 * The exec area in-process: policy (allowlist, symlinks, env, cwd), process
 * groups and timeouts, output caps, exec_start/status/kill, streaming, record
 * expiry and the concurrency limit.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type AgentConfig } from "../src/config/schema.ts";
import { ChildRun, type ProcessOps } from "../src/exec/child.ts";
import { KernelPipe, linuxProcessOps } from "../src/exec/linux.ts";
import { ExecManager, type ExecDeps } from "../src/exec/exec-service.ts";
import { notificationPieceBytes, OutputCapture, resultFitBytes, splitBytes } from "../src/exec/output.ts";
import {
  BASE_ENV,
  buildAllowlist,
  buildChildEnv,
  forbiddenEnvReason,
  resolveCommand,
  SAFE_PATH,
  type FsProbe,
} from "../src/exec/policy.ts";
import { silentLogger, type Logger } from "../src/log/logger.ts";
import { createServices } from "../src/create-services.ts";
import { RpcError } from "../src/protocol/errors.ts";
import type { Params } from "../src/schema/methods.ts";
import type { CallContext } from "../src/services.ts";
import { memorySession, MemoryAudit } from "./helpers/in-memory.ts";
import { eventually, processGone } from "./helpers/agent-process.ts";

const FORBIDDEN = -32001;
const NOT_FOUND = -32002;
const TOO_LARGE = -32004;
const OPERATION_FAILED = -32000;
const INVALID_PARAMS = -32602;

const BUSYBOX = "/usr/bin/busybox";
const hasBusybox = existsSync(BUSYBOX);

let dir: string;
/** Started process ids to make sure nothing is left behind. */
const strays: number[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kma-exec-test-"));
  // A symlink to an allowed binary, from a directory outside SAFE_PATH.
  symlinkSync("/usr/bin/true", join(dir, "my-true"));
  // A symlink to a binary that is NOT allowed in the policy config.
  symlinkSync("/bin/sh", join(dir, "evil"));
  // An executable script outside the allowlist.
  writeFileSync(join(dir, "script.sh"), "#!/bin/sh\necho script\n");
  chmodSync(join(dir, "script.sh"), 0o755);
  // An allowlisted script (used to check argv/env handling through a shebang).
  writeFileSync(join(dir, "allowed.sh"), '#!/bin/sh\necho "args:$#:$1"\n');
  chmodSync(join(dir, "allowed.sh"), 0o755);
  writeFileSync(join(dir, "plain-file"), "not a directory");
  mkdirSync(join(dir, "bb"));
  mkdirSync(join(dir, "bb2"));
  mkdirSync(join(dir, "other"));
  if (hasBusybox) {
    // A multi-call binary allowed under two names; reached through other names.
    symlinkSync(BUSYBOX, join(dir, "bb", "true"));
    symlinkSync(BUSYBOX, join(dir, "bb", "false"));
    symlinkSync(BUSYBOX, join(dir, "bb2", "true"));
    symlinkSync(BUSYBOX, join(dir, "other", "sh"));
    symlinkSync(BUSYBOX, join(dir, "other", "false"));
  }
});

afterAll(() => {
  for (const pid of strays) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

function makeConfig(allowed: string[], limits: Partial<AgentConfig["limits"]> = {}): AgentConfig {
  const config = defaultConfig();
  config.security.enable_exec = true;
  config.security.allowed_commands = allowed;
  config.limits = { ...config.limits, exec_timeout_ms: 20_000, ...limits };
  return config;
}

function manager(allowed: string[], limits: Partial<AgentConfig["limits"]> = {}, deps: Partial<ExecDeps> = {}, logger: Logger = silentLogger) {
  return new ExecManager(makeConfig(allowed, limits), logger, { drainGraceMs: 200, ...deps });
}

/** Params as the dispatcher hands them over (schema defaults applied). */
function execParams(command: string, extra: Partial<Params<"exec">> = {}): Params<"exec"> {
  return { command, args: [], env: {}, ...extra };
}

function startParams(command: string, extra: Partial<Params<"exec_start">> = {}): Params<"exec_start"> {
  return { command, args: [], env: {}, stream: false, ...extra };
}

async function rpcError(promise: unknown): Promise<RpcError> {
  try {
    await (typeof promise === "function" ? (promise as () => unknown)() : promise);
  } catch (error) {
    if (error instanceof RpcError) return error;
    throw error;
  }
  throw new Error("expected an RpcError, got a result");
}

const text = (b64: string) => Buffer.from(b64, "base64").toString("utf8");
const b64 = (s: string) => Buffer.from(s).toString("base64");

interface Notification {
  method: string;
  params: any;
}

function fakeContext(): CallContext & { notes: Notification[] } {
  const notes: Notification[] = [];
  return {
    transport: "test",
    notes,
    notify(method, params) {
      notes.push({ method, params });
    },
  };
}


function processState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return "gone";
  }
}


// ---------------------------------------------------------------- pure policy

describe("command resolution (pure)", () => {
  /** A fake filesystem: path -> real path for executable files. */
  function fakeFs(files: Record<string, string>, dirs: string[] = []): FsProbe {
    return {
      realpath(path) {
        const real = files[path];
        if (!real) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
        return real;
      },
      kind: (path) => (path in files ? "file" : dirs.includes(path) ? "directory" : null),
      executable: (path) => !path.includes("noexec"),
    };
  }

  test("a name is looked up in SAFE_PATH order, whatever PATH the agent has", () => {
    const fs = fakeFs({ "/usr/bin/tool": "/usr/bin/tool", "/usr/local/bin/tool": "/opt/tool/bin/tool", "/home/x/bin/other": "/home/x/bin/other" });
    const saved = process.env.PATH;
    process.env.PATH = "/home/x/bin";
    try {
      expect(resolveCommand("tool", fs)).toEqual({ ok: true, command: { path: "/usr/local/bin/tool", real: "/opt/tool/bin/tool" } });
      expect(resolveCommand("other", fs)).toEqual({ ok: false, reason: "not-found" });
    } finally {
      process.env.PATH = saved;
    }
    expect(SAFE_PATH).toBe("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  });

  test("relative paths with a slash are refused; absolute paths are taken as they are", () => {
    const fs = fakeFs({ "/usr/bin/tool": "/usr/bin/tool" });
    for (const command of ["./tool", "../tool", "bin/tool", "usr/bin/tool"]) expect(resolveCommand(command, fs)).toEqual({ ok: false, reason: "refused", detail: "relative paths are not allowed; use a name or an absolute path" });
    expect(resolveCommand("/usr/bin/tool", fs)).toEqual({ ok: true, command: { path: "/usr/bin/tool", real: "/usr/bin/tool" } });
    expect(resolveCommand("tool\0x", fs)).toEqual({ ok: false, reason: "invalid" });
  });

  test("files that are not executable are skipped like execvp does", () => {
    const fs = fakeFs({ "/usr/local/bin/noexec-tool": "/x", "/usr/local/bin/tool": "/usr/local/bin/tool" });
    expect(resolveCommand("/usr/local/bin/noexec-tool", fs)).toEqual({ ok: false, reason: "not-found" });
  });

  test("allowlist entries that resolve to nothing are reported and ignored", () => {
    const fs = fakeFs({ "/usr/bin/tool": "/usr/bin/tool" });
    const allowlist = buildAllowlist(["tool", "missing", "./rel", "/usr/bin/tool"], fs);
    expect([...allowlist.byReal.keys()]).toEqual(["/usr/bin/tool"]);
    expect(allowlist.byReal.get("/usr/bin/tool")!.map((e) => e.path)).toEqual(["/usr/bin/tool"]); // deduplicated
    expect(allowlist.ignored.map((i) => i.configured)).toEqual(["missing", "./rel"]);
  });

  test("the constructor logs a warning per ignored entry", () => {
    const warnings: unknown[] = [];
    const logger: Logger = { ...silentLogger, warn: (msg, fields) => warnings.push({ msg, ...fields }) };
    const m = manager(["true", "no-such-command-kma", "./x"], {}, {}, logger);
    expect(warnings).toEqual([
      expect.objectContaining({ msg: "allowed_commands entry ignored", command: "no-such-command-kma" }),
      expect.objectContaining({ msg: "allowed_commands entry ignored", command: "./x" }),
    ]);
    expect(m.allowlist.byReal.has(realpathSync("/usr/bin/true"))).toBe(true);
  });
});

describe("environment (pure)", () => {
  test("loader, glibc, PATH, shell and interpreter start-up variables are refused, naming the variable", () => {
    for (const name of ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_ANYTHING", "ld_preload", "GLIBC_TUNABLES", "GCONV_PATH", "PATH", "BASH_ENV", "ENV", "PYTHONPATH", "NODE_OPTIONS", "PERL5OPT"]) {
      expect(forbiddenEnvReason(name)).not.toBeNull();
      let error: unknown;
      try {
        buildChildEnv({ OK: "1", [name]: "/tmp/x" });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(RpcError);
      expect((error as RpcError).code).toBe(FORBIDDEN);
      expect((error as RpcError).message).toContain(`'${name}'`);
    }
  });

  test("the child gets the minimal base env plus the request's variables, never the agent's", () => {
    process.env.KMA_AGENT_SECRET = "leak";
    try {
      expect(buildChildEnv({ FOO: "bar", HOME: "/srv" })).toEqual({ PATH: SAFE_PATH, HOME: "/srv", LANG: "C.UTF-8", FOO: "bar" });
      expect(buildChildEnv({})).toEqual({ ...BASE_ENV });
    } finally {
      delete process.env.KMA_AGENT_SECRET;
    }
  });

  test("NUL bytes in a value are invalid params", () => {
    expect(() => buildChildEnv({ A: "x\0y" })).toThrow(/NUL/);
  });
});

describe("output capping (pure)", () => {
  test("keeps the first bytes up to the cap and flags truncation", () => {
    const capture = new OutputCapture(5);
    expect(Buffer.from(capture.push(Buffer.from("abc"))).toString()).toBe("abc");
    expect(Buffer.from(capture.push(Buffer.from("defgh"))).toString()).toBe("de");
    expect(capture.push(Buffer.from("ijk")).length).toBe(0);
    expect(capture.bytes().toString()).toBe("abcde");
    expect(capture.truncated).toBe(true);
    expect(capture.total).toBe(11);
  });

  test("exactly at the cap is not truncated; a cap of 0 keeps nothing", () => {
    const exact = new OutputCapture(3);
    exact.push(Buffer.from("abc"));
    expect(exact.truncated).toBe(false);
    const none = new OutputCapture(0);
    none.push(Buffer.from("a"));
    expect(none.base64()).toBe("");
    expect(none.truncated).toBe(true);
  });

  test("notification pieces fit max_frame_bytes once base64-encoded", () => {
    for (const max of [1024, 4096, 65_536, 16 * 1024 * 1024]) {
      const piece = notificationPieceBytes(max);
      expect(Math.ceil(piece / 3) * 4 + 256).toBeLessThanOrEqual(max);
    }
    expect(splitBytes(new Uint8Array(10), 4).map((p) => p.length)).toEqual([4, 4, 2]);
    expect(splitBytes(new Uint8Array(0), 4)).toEqual([]);
  });
});

// ---------------------------------------------------------------- policy through the manager

describe("policy refusals", () => {
  let m: ExecManager;
  beforeAll(() => {
    const allowed = ["true", "echo", join(dir, "allowed.sh")];
    if (hasBusybox) allowed.push(join(dir, "bb", "true"), join(dir, "bb", "false"));
    m = manager(allowed);
  });

  test("exec is off by default: the dispatcher answers -32001 for every exec method", async () => {
    const { sendJson, replies } = memorySession();
    const methods: [string, unknown][] = [
      ["exec", { command: "true" }],
      ["exec_start", { command: "true" }],
      ["exec_status", { handle: "x" }],
      ["exec_kill", { handle: "x" }],
    ];
    methods.forEach(([method, params], id) => sendJson({ jsonrpc: "2.0", id, method, params }));
    await eventually(() => replies.length === methods.length, 10_000);
    for (const reply of replies as { error: { code: number; message: string } }[]) {
      expect(reply.error.code).toBe(FORBIDDEN);
      expect(reply.error.message).toContain("disabled");
    }
  });

  test("an env variable named *_base64 with a long base64 value reaches the command whole (the frame parser decodes only params fields)", async () => {
    const config = makeConfig(["sh"]);
    const { sendJson, replies } = memorySession({}, { config, services: createServices(config, silentLogger, new MemoryAudit()) });
    const value = Buffer.alloc(75_000, 7).toString("base64"); // 100,000 characters: a long string in a long frame, under the kernel's 128 KiB per variable
    sendJson({ jsonrpc: "2.0", id: 1, method: "exec", params: { command: "sh", args: ["-c", 'printf %s "$PAYLOAD_base64"'], env: { PAYLOAD_base64: value } } });
    await eventually(() => replies.length === 1, 10_000);
    const reply = replies[0] as { result?: { exit_code: number; stdout_base64: string }; error?: unknown };
    expect(reply.error).toBeUndefined();
    expect(reply.result!.exit_code).toBe(0);
    expect(text(reply.result!.stdout_base64)).toBe(value);
  });

  test("with exec enabled, the dispatcher runs an allowed command and refuses others", async () => {
    const config = makeConfig(["echo"]);
    const audit = new MemoryAudit();
    const { sendJson, replies } = memorySession({}, { config, services: createServices(config, silentLogger, audit) });
    sendJson({ jsonrpc: "2.0", id: 1, method: "exec", params: { command: "echo", args: ["hi"] } });
    sendJson({ jsonrpc: "2.0", id: 2, method: "exec", params: { command: "sh", args: ["-c", "id"] } });
    await eventually(() => replies.length === 2, 10_000);
    const byId = new Map((replies as any[]).map((r) => [r.id, r]));
    expect(text(byId.get(1).result.stdout_base64)).toBe("hi\n");
    expect(byId.get(2).error).toEqual({ code: FORBIDDEN, message: "Command 'sh' is not in allowed_commands", data: { command: "sh" } });
  });

  test("a command outside the allowlist is refused, naming it", async () => {
    for (const command of ["sh", "/bin/sh", "/usr/bin/id", "no-such-command-kma", "/nonexistent/x"]) {
      const error = await rpcError(() => m.run(execParams(command)));
      expect(error.code).toBe(FORBIDDEN);
      expect(error.message).toContain(`'${command}'`);
    }
  });

  test("relative paths are refused", async () => {
    for (const command of ["./true", "../bin/true", "bin/true", "usr/bin/true"]) {
      const error = await rpcError(() => m.run(execParams(command)));
      expect(error.code).toBe(FORBIDDEN);
      expect(error.message).toContain("relative");
    }
  });

  test("a symlink elsewhere to a binary outside the allowlist is refused", async () => {
    expect((await rpcError(() => m.run(execParams(join(dir, "evil"), { args: ["-c", "echo pwned"] })))).code).toBe(FORBIDDEN);
    expect((await rpcError(() => m.run(execParams(join(dir, "script.sh"))))).code).toBe(FORBIDDEN);
  });

  test("a symlink to an allowed binary is allowed (the same file runs)", async () => {
    const result = await m.run(execParams(join(dir, "my-true")));
    expect(result.exit_code).toBe(0);
    // Also an absolute path with '..' that lands on it, and the /bin alias.
    expect((await m.run(execParams("/usr/bin/../bin/true"))).exit_code).toBe(0);
    expect((await m.run(execParams("/bin/true"))).exit_code).toBe(0);
  });

  test("an allowlisted script runs, with args passed as they are (no shell)", async () => {
    const result = await m.run(execParams(join(dir, "allowed.sh"), { args: ["a b; echo injected", "$(id)"] }));
    expect(text(result.stdout_base64)).toBe("args:2:a b; echo injected\n");
    const echo = await m.run(execParams("echo", { args: ["$HOME", "`id`", "*", "a|b"] }));
    expect(text(echo.stdout_base64)).toBe("$HOME `id` * a|b\n");
  });

  test.skipIf(!hasBusybox)("a multi-call binary runs as the allowlisted name, never as the name the request used", async () => {
    // other/sh -> busybox; allowed are bb/true and bb/false (also busybox): ambiguous, refused.
    const ambiguous = await rpcError(() => m.run(execParams(join(dir, "other", "sh"), { args: ["-c", "echo pwned"] })));
    expect(ambiguous.code).toBe(FORBIDDEN);
    // other/false -> busybox: the allowed entry named false runs.
    const viaFalse = await m.run(execParams(join(dir, "other", "false"), { args: ["-c", "echo pwned"] }));
    expect(viaFalse.exit_code).toBe(1);
    expect(viaFalse.stdout_base64).toBe("");
    // With one busybox entry, any name reaching busybox runs that entry (true), not sh.
    const single = manager([join(dir, "bb2", "true")]);
    const viaSh = await single.run(execParams(join(dir, "other", "sh"), { args: ["-c", "echo pwned"] }));
    expect(viaSh.exit_code).toBe(0);
    expect(viaSh.stdout_base64).toBe("");
  });

  test("loader variables in env are refused before anything runs", async () => {
    for (const name of ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PATH", "BASH_ENV"]) {
      const error = await rpcError(() => m.run(execParams("true", { env: { [name]: "/tmp/evil.so" } })));
      expect(error.code).toBe(FORBIDDEN);
      expect(error.message).toContain(name);
      expect(error.data).toEqual({ variable: name });
    }
    // exec_start checks the same.
    expect((await rpcError(() => m.start(startParams("true", { env: { LD_PRELOAD: "x" } }), fakeContext()))).code).toBe(FORBIDDEN);
  });

  test("cwd: relative is invalid, missing or not a directory is NOT_FOUND", async () => {
    expect((await rpcError(() => m.run(execParams("true", { cwd: "tmp" })))).code).toBe(INVALID_PARAMS);
    expect((await rpcError(() => m.run(execParams("true", { cwd: join(dir, "nope") })))).code).toBe(NOT_FOUND);
    expect((await rpcError(() => m.run(execParams("true", { cwd: join(dir, "plain-file") })))).code).toBe(NOT_FOUND);
  });

  test("NUL bytes in args are invalid params", async () => {
    expect((await rpcError(() => m.run(execParams("echo", { args: ["a\0b"] })))).code).toBe(INVALID_PARAMS);
  });

  test("spawn failures map to clear errors", async () => {
    const failing = (code: string): ProcessOps => ({
      spawn: () => {
        throw Object.assign(new Error(`${code}: posix_spawn failed`), { code });
      },
      killGroup: () => false,
    });
    const enoent = await rpcError(() => manager(["true"], {}, { processes: failing("ENOENT") }).run(execParams("true")));
    expect(enoent.code).toBe(NOT_FOUND);
    expect(enoent.message).toContain("true");
    const eacces = await rpcError(() => manager(["true"], {}, { processes: failing("EACCES") }).run(execParams("true")));
    expect(eacces.code).toBe(OPERATION_FAILED);
    expect(eacces.data).toEqual({ command: "true", errno: "EACCES" });
  });
});

// ---------------------------------------------------------------- running commands

describe("exec", () => {
  let m: ExecManager;
  beforeAll(() => {
    m = manager(["sh", "echo", "true", "false", "cat", "env", "pwd", "sleep"], { exec_max_output_bytes: 64 * 1024 });
  });

  test("exit codes, output and duration", async () => {
    const echo = await m.run(execParams("echo", { args: ["hello", "world"] }));
    expect(echo).toEqual({
      exit_code: 0,
      signal: null,
      stdout_base64: b64("hello world\n"),
      stderr_base64: "",
      stdout_truncated: false,
      stderr_truncated: false,
      timed_out: false,
      duration_ms: expect.any(Number),
    });
    expect(echo.duration_ms).toBeGreaterThanOrEqual(0);
    expect((await m.run(execParams("true"))).exit_code).toBe(0);
    expect((await m.run(execParams("false"))).exit_code).toBe(1);
    const seven = await m.run(execParams("sh", { args: ["-c", "echo out; echo err >&2; exit 7"] }));
    expect([seven.exit_code, seven.signal, text(seven.stdout_base64), text(seven.stderr_base64)]).toEqual([7, null, "out\n", "err\n"]);
  });

  test("a process ended by a signal reports its name and a null exit code", async () => {
    const result = await m.run(execParams("sh", { args: ["-c", "kill -TERM $$"] }));
    expect(result.exit_code).toBeNull();
    expect(result.signal).toBe("SIGTERM");
    expect(result.timed_out).toBe(false);
  });

  test("stdin_base64 is written to stdin, which is then closed", async () => {
    const bytes = Buffer.from([0, 1, 2, 255, 10, 65]);
    const result = await m.run(execParams("cat", { stdin_base64: bytes.toString("base64") }));
    expect(Buffer.from(result.stdout_base64, "base64")).toEqual(bytes);
    // Empty stdin: EOF at once. No stdin: /dev/null.
    expect((await m.run(execParams("cat", { stdin_base64: "" }))).stdout_base64).toBe("");
    expect((await m.run(execParams("cat"))).exit_code).toBe(0);
  });

  test("env: the base env plus the request's, nothing of the agent's", async () => {
    process.env.KMA_AGENT_SECRET = "leak";
    try {
      const result = await m.run(execParams("env", { env: { FOO: "bar baz", EMPTY: "" } }));
      const lines = text(result.stdout_base64).trim().split("\n").sort();
      expect(lines).toEqual(["EMPTY=", "FOO=bar baz", "HOME=/root", "LANG=C.UTF-8", `PATH=${SAFE_PATH}`]);
    } finally {
      delete process.env.KMA_AGENT_SECRET;
    }
  });

  test("cwd defaults to / and can be set", async () => {
    expect(text((await m.run(execParams("pwd"))).stdout_base64)).toBe("/\n");
    expect(text((await m.run(execParams("sh", { args: ["-c", "pwd -P"], cwd: dir }))).stdout_base64)).toBe(`${realpathSync(dir)}\n`);
  });

  test("output is capped per stream with flags, and the pipes are drained past the cap", async () => {
    // 2 MiB on each stream, far beyond a pipe's buffer: the child must never block.
    const script = "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2; echo done >&2";
    const small = await m.run(execParams("sh", { args: ["-c", script], max_output_bytes: 10 }));
    expect(small.exit_code).toBe(0);
    expect(Buffer.from(small.stdout_base64, "base64")).toEqual(Buffer.alloc(10));
    expect(Buffer.from(small.stderr_base64, "base64").length).toBe(10);
    expect([small.stdout_truncated, small.stderr_truncated]).toEqual([true, true]);
    // The request may only lower the configured cap (64 KiB here).
    const big = await m.run(execParams("sh", { args: ["-c", script], max_output_bytes: 10 * 1024 * 1024 }));
    expect(Buffer.from(big.stdout_base64, "base64").length).toBe(64 * 1024);
    expect(big.stdout_truncated).toBe(true);
    // Below the cap: not truncated.
    const fits = await m.run(execParams("sh", { args: ["-c", "head -c 1000 /dev/zero"], max_output_bytes: 1000 }));
    expect([Buffer.from(fits.stdout_base64, "base64").length, fits.stdout_truncated]).toEqual([1000, false]);
  });

  test("/dev/stdout and /dev/stderr can be opened: the output pipes are kernel pipes, as qemu-ga's", async () => {
    // A socket (Bun's own "pipe") cannot be opened: sh would fail with "No such device or address".
    const result = await m.run(execParams("sh", { args: ["-c", "echo out > /dev/stdout && echo err > /dev/stderr && stat -L -c %F /dev/stdout"] }));
    expect([result.exit_code, text(result.stdout_base64), text(result.stderr_base64)]).toEqual([0, "out\nfifo\n", "err\n"]);
  });

  test("output written after the child's first moments still arrives, in order", async () => {
    // The runner reads at once only what is there when the child is done or 10 ms have passed; the rest is streamed.
    const result = await m.run(execParams("sh", { args: ["-c", "echo early; sleep 0.1; echo late; sleep 0.1; echo err >&2"] }));
    expect([result.exit_code, text(result.stdout_base64), text(result.stderr_base64)]).toEqual([0, "early\nlate\n", "err\n"]);
  });

  test("no file descriptor is left open: quick and slow runs, output past the cap, timeouts, spawn failures", async () => {
    const open = () => readdirSync("/proc/self/fd").length;
    // Allowed, but execve fails (ENOENT for the interpreter): the spawn throws after the pipes were made.
    const unstartable = join(dir, "unstartable.sh");
    writeFileSync(unstartable, "#!/nonexistent/interpreter\n", { mode: 0o755 });
    const fds = manager(["sh", "true", unstartable], { exec_max_output_bytes: 1024 });
    await fds.run(execParams("true")); // Bun's own descriptors (pidfd support, ...) are opened once
    const before = open();
    for (let i = 0; i < 20; i++) await fds.run(execParams("true"));
    await fds.run(execParams("sh", { args: ["-c", "sleep 0.05; head -c 300000 /dev/zero"] }));
    await fds.run(execParams("sh", { args: ["-c", "sleep 100"], timeout_ms: 200 }));
    expect((await rpcError(() => fds.run(execParams(unstartable)))).code).toBe(NOT_FOUND);
    // At most as many as before: a descriptor of an earlier test file that closes meanwhile is not ours to count.
    await eventually(() => open() <= before, 10_000);
  }, 20_000);

  test("the timeout kills the whole process group, grandchildren included", async () => {
    const started = Date.now();
    const result = await m.run(execParams("sh", { args: ["-c", "sleep 100 & echo $!; sh -c 'sleep 100 & echo $!; sleep 100' & sleep 100"], timeout_ms: 500 }));
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(result.timed_out).toBe(true);
    expect(result.signal).toBe("SIGKILL");
    expect(result.exit_code).toBeNull();
    const pids = text(result.stdout_base64).trim().split("\n").map(Number);
    expect(pids.length).toBe(2);
    strays.push(...pids);
    await eventually(() => pids.every(processGone), 10_000);
  });

  test("background processes left in the group die with the leader", async () => {
    const result = await m.run(execParams("sh", { args: ["-c", "sleep 100 & echo $!"] }));
    expect(result.exit_code).toBe(0);
    expect(result.timed_out).toBe(false);
    const pid = Number(text(result.stdout_base64).trim());
    strays.push(pid);
    await eventually(() => processGone(pid), 10_000);
  });

  test("a descendant that left the group and holds the pipes cannot hang the run past its timeout", async () => {
    const started = Date.now();
    const result = await m.run(execParams("sh", { args: ["-c", "setsid sh -c 'echo $$; exec sleep 30' & sleep 1"], timeout_ms: 1500 }));
    const pid = Number(text(result.stdout_base64).trim());
    if (pid > 1) strays.push(pid);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(result.exit_code).toBe(0);
  });
});

// ---------------------------------------------------------------- exec_start and friends

describe("exec_start, exec_status, exec_kill", () => {
  let m: ExecManager;
  beforeAll(() => {
    m = manager(["sh", "sleep", "true", "echo"]);
  });

  test("start returns an unguessable handle and the pid at once", async () => {
    const a = m.start(startParams("sleep", { args: ["30"] }), fakeContext());
    const b = m.start(startParams("true"), fakeContext());
    expect(a.handle).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(a.handle).not.toBe(b.handle);
    expect(a.pid).toBeGreaterThan(1);
    strays.push(a.pid);
    const status = await m.status({ handle: a.handle, wait_ms: 0 });
    expect(status).toEqual({ handle: a.handle, pid: a.pid, running: true, result: null });
    expect(m.kill({ handle: a.handle, signal: "SIGKILL" })).toEqual({ handle: a.handle, signal: "SIGKILL", running: true });
    const done = await m.status({ handle: a.handle, wait_ms: 10_000 });
    expect(done.running).toBe(false);
    expect(done.result!.signal).toBe("SIGKILL");
    // Killing a finished process sends nothing.
    expect(m.kill({ handle: a.handle, signal: "SIGTERM" })).toEqual({ handle: a.handle, signal: "SIGTERM", running: false });
    expect((await m.status({ handle: b.handle, wait_ms: 10_000 })).result!.exit_code).toBe(0);
  });

  test("wait_ms long-polls and returns as soon as the process exits", async () => {
    const { handle } = m.start(startParams("sh", { args: ["-c", "sleep 0.3; echo finished"] }), fakeContext());
    const started = Date.now();
    const status = await m.status({ handle, wait_ms: 60_000 });
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(status.running).toBe(false);
    expect(text(status.result!.stdout_base64)).toBe("finished\n");
  });

  test("wait_ms returns with running: true when the process outlives it", async () => {
    const { handle, pid } = m.start(startParams("sleep", { args: ["30"] }), fakeContext());
    strays.push(pid);
    expect((await m.status({ handle, wait_ms: 100 })).running).toBe(true);
    m.kill({ handle, signal: "SIGKILL" });
    expect((await m.status({ handle, wait_ms: 10_000 })).running).toBe(false);
  });

  test("exec_kill signals the whole process group", async () => {
    const { handle, pid } = m.start(startParams("sh", { args: ["-c", "sleep 100 & echo $!; wait"] }), fakeContext());
    strays.push(pid);
    // The child's pid arrives on stdout only at the end; find it through /proc instead.
    const child = await eventually(() => {
      try {
        const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
        return children[0];
      } catch {
        return undefined;
      }
    }, 10_000);
    strays.push(child);
    expect(m.kill({ handle, signal: "SIGSTOP" }).running).toBe(true);
    await eventually(() => processState(child) === "T" && processState(pid) === "T", 10_000);
    m.kill({ handle, signal: "SIGKILL" });
    const status = await m.status({ handle, wait_ms: 10_000 });
    expect(status.result!.signal).toBe("SIGKILL");
    await eventually(() => processGone(child), 10_000);
  });

  test("unknown handles are NOT_FOUND", async () => {
    expect((await rpcError(() => m.status({ handle: "no-such-handle", wait_ms: 0 }))).code).toBe(NOT_FOUND);
    expect((await rpcError(() => m.kill({ handle: "no-such-handle", signal: "SIGTERM" }))).code).toBe(NOT_FOUND);
  });

  test("exec_start applies the timeout too", async () => {
    const { handle, pid } = m.start(startParams("sleep", { args: ["30"], timeout_ms: 300 }), fakeContext());
    strays.push(pid);
    const status = await m.status({ handle, wait_ms: 15_000 });
    expect(status.result).toMatchObject({ timed_out: true, signal: "SIGKILL", exit_code: null });
  });
});

describe("streaming", () => {
  test("output chunks arrive in order with a seq counter, then exec_exit with the final result", async () => {
    const m = manager(["sh"]);
    const context = fakeContext();
    const script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.02; done";
    const { handle } = m.start(startParams("sh", { args: ["-c", script], stream: true }), context);
    const status = await m.status({ handle, wait_ms: 15_000 });
    const outputs = context.notes.filter((n) => n.method === "exec_output");
    expect(outputs.map((n) => n.params.seq)).toEqual(outputs.map((_, i) => i));
    expect(outputs.every((n) => n.params.handle === handle)).toBe(true);
    const joined = (stream: string) => outputs.filter((n) => n.params.stream === stream).map((n) => text(n.params.data_base64)).join("");
    expect(joined("stdout")).toBe("out1\nout2\nout3\nout4\nout5\n");
    expect(joined("stderr")).toBe("err1\nerr2\nerr3\nerr4\nerr5\n");
    // exec_exit comes last, after every chunk, and carries what exec_status gives.
    await eventually(() => context.notes.at(-1)?.method === "exec_exit", 10_000);
    expect(context.notes.filter((n) => n.method === "exec_exit")).toEqual([{ method: "exec_exit", params: { handle, result: status.result } }]);
  });

  test("without stream: true nothing is pushed", async () => {
    const m = manager(["echo"]);
    const context = fakeContext();
    const { handle } = m.start(startParams("echo", { args: ["quiet"] }), context);
    await m.status({ handle, wait_ms: 15_000 });
    await Bun.sleep(10);
    expect(context.notes).toEqual([]);
  });

  test("chunks are split to fit max_frame_bytes; nothing is pushed past the output cap", async () => {
    const m = manager(["sh"], { max_frame_bytes: 1024, exec_max_output_bytes: 3000 });
    const context = fakeContext();
    const { handle } = m.start(startParams("sh", { args: ["-c", "head -c 20000 /dev/urandom"], stream: true }), context);
    const status = await m.status({ handle, wait_ms: 15_000 });
    const outputs = context.notes.filter((n) => n.method === "exec_output");
    for (const note of outputs) expect(JSON.stringify({ jsonrpc: "2.0", method: note.method, params: note.params }).length).toBeLessThanOrEqual(1024);
    const streamed = Buffer.concat(outputs.map((n) => Buffer.from(n.params.data_base64, "base64")));
    expect(streamed.length).toBe(3000);
    // The result keeps only what fits one frame (nothing at all at 1 KiB frames), and says so.
    expect(status.result!.stdout_base64).toBe(streamed.subarray(0, resultFitBytes(1024)).toString("base64"));
    expect(status.result!.stdout_truncated).toBe(true);
    expect(outputs.map((n) => n.params.seq)).toEqual(outputs.map((_, i) => i));
    const exit = await eventually(() => context.notes.find((n) => n.method === "exec_exit"), 10_000);
    expect(exit.params.result).toEqual(status.result!);
  });

  test("a host that went away (notify throws) breaks nothing: the result stays available", async () => {
    const m = manager(["sh"]);
    const context: CallContext = {
      transport: "gone",
      notify() {
        throw new Error("connection closed");
      },
    };
    const { handle } = m.start(startParams("sh", { args: ["-c", "echo a; echo b >&2"], stream: true }), context);
    const status = await m.status({ handle, wait_ms: 15_000 });
    expect(status.result).toMatchObject({ exit_code: 0, stdout_base64: b64("a\n"), stderr_base64: b64("b\n") });
  });
});

describe("records and limits", () => {
  test("finished records above exec_records_max are dropped, oldest first", async () => {
    const m = manager(["echo"], { exec_records_max: 2 });
    const handles: string[] = [];
    for (const word of ["one", "two", "three"]) {
      const { handle } = m.start(startParams("echo", { args: [word] }), fakeContext());
      await m.status({ handle, wait_ms: 15_000 });
      handles.push(handle);
    }
    expect((await rpcError(() => m.status({ handle: handles[0]!, wait_ms: 0 }))).code).toBe(NOT_FOUND);
    expect(text((await m.status({ handle: handles[1]!, wait_ms: 0 })).result!.stdout_base64)).toBe("two\n");
    expect(text((await m.status({ handle: handles[2]!, wait_ms: 0 })).result!.stdout_base64)).toBe("three\n");
    expect(m.recordCount).toBe(2);
  });

  test("finished records expire after exec_records_ttl_seconds; running ones are kept", async () => {
    let now = 1_000_000;
    const m = manager(["echo", "sleep"], { exec_records_ttl_seconds: 5 }, { now: () => now });
    const { handle } = m.start(startParams("echo", { args: ["x"] }), fakeContext());
    await m.status({ handle, wait_ms: 15_000 });
    const sleeper = m.start(startParams("sleep", { args: ["30"] }), fakeContext());
    strays.push(sleeper.pid);
    now += 4_000;
    expect((await m.status({ handle, wait_ms: 0 })).running).toBe(false);
    now += 1_500;
    const expired = await rpcError(() => m.status({ handle, wait_ms: 0 }));
    expect(expired.code).toBe(NOT_FOUND);
    expect(expired.message).toContain(handle);
    expect((await rpcError(() => m.kill({ handle, signal: "SIGTERM" }))).code).toBe(NOT_FOUND);
    now += 100_000;
    expect((await m.status({ handle: sleeper.handle, wait_ms: 0 })).running).toBe(true);
    m.kill({ handle: sleeper.handle, signal: "SIGKILL" });
    expect((await m.status({ handle: sleeper.handle, wait_ms: 15_000 })).running).toBe(false);
  });

  test("running processes count against exec_max_concurrent (TOO_LARGE with data.limit)", async () => {
    const m = manager(["sleep", "true"], { exec_max_concurrent: 2 });
    const a = m.start(startParams("sleep", { args: ["30"] }), fakeContext());
    const b = m.start(startParams("sleep", { args: ["30"] }), fakeContext());
    strays.push(a.pid, b.pid);
    expect(m.runningCount).toBe(2);
    const refused = await rpcError(() => m.start(startParams("true"), fakeContext()));
    expect(refused.code).toBe(TOO_LARGE);
    expect(refused.data).toEqual({ limit: 2 });
    expect(refused.message).toContain("exec_max_concurrent");
    expect((await rpcError(() => m.run(execParams("true")))).code).toBe(TOO_LARGE);
    m.kill({ handle: a.handle, signal: "SIGKILL" });
    await m.status({ handle: a.handle, wait_ms: 15_000 });
    expect((await m.run(execParams("true"))).exit_code).toBe(0);
    m.killAll();
    await m.status({ handle: b.handle, wait_ms: 15_000 });
    expect(m.runningCount).toBe(0);
  });
});

describe("child runner", () => {
  test("readNow takes at most 256 KiB per call, so a writer that keeps the pipe full cannot hold the event loop", async () => {
    const child = linuxProcessOps.spawn({ file: "/usr/bin/yes", argv0: "yes", args: [], env: {}, cwd: "/", stdin: null });
    try {
      await eventually(() => {
        const { chunks, ended } = (child.stdout as KernelPipe).readNow();
        const bytes = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
        expect(ended).toBe(false);
        expect(bytes).toBeLessThanOrEqual(256 * 1024);
        return bytes === 256 * 1024;
      }, 5_000);
    } finally {
      linuxProcessOps.killGroup(child.pid, "SIGKILL");
      await child.exited;
      child.stdout.close();
      child.stderr.close();
    }
  });

  test("killGroup signals a live group (true), says false once it is gone, and never signals pgid 0 or 1", async () => {
    const child = linuxProcessOps.spawn({ file: "/usr/bin/sleep", argv0: "sleep", args: ["30"], env: {}, cwd: "/", stdin: null });
    try {
      expect(linuxProcessOps.killGroup(child.pid, "SIGTERM")).toBe(true);
      expect(await child.exited).toEqual({ exitCode: null, signal: "SIGTERM" });
      await eventually(() => !linuxProcessOps.killGroup(child.pid, "SIGKILL"), 5_000);
      expect(linuxProcessOps.killGroup(0, "SIGKILL")).toBe(false);
      expect(linuxProcessOps.killGroup(1, "SIGKILL")).toBe(false);
    } finally {
      child.stdout.close();
      child.stderr.close();
    }
  });

  test("a child whose exit promise rejects still yields a result", async () => {
    const empty = () => ({ stream: () => new ReadableStream<Uint8Array>({ start: (c) => c.close() }), close: () => {} });
    const run = new ChildRun({ pid: 999_999_999, stdout: empty(), stderr: empty(), exited: Promise.reject(new Error("waitpid failed")) }, { ...linuxProcessOps, killGroup: () => false }, {
      timeoutMs: 10_000,
      maxOutputBytes: 10,
      resultBytes: 10,
      drainGraceMs: 10,
      startedAt: performance.now(),
    });
    expect(await run.done).toMatchObject({ exit_code: null, signal: null, timed_out: false });
  });
});

describe("output that must fit one reply frame", () => {
  test("resultFitBytes leaves room for both streams base64-encoded in one frame", async () => {
    const { resultFitBytes } = await import("../src/exec/output.ts");
    for (const frame of [16 * 1024 * 1024, 65_536, 1_048_576]) {
      const perStream = resultFitBytes(frame);
      const encoded = Math.ceil(perStream / 3) * 4;
      expect(2 * encoded + 4096).toBeLessThanOrEqual(frame);
      expect(2 * (encoded + 4) + 4096).toBeGreaterThan(frame - 16); // and no more room than that
    }
  });
});
