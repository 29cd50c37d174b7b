/**
 * Exec policy as pure functions: which file a command name means, whether it
 * is allowlisted, which environment a child gets. The few filesystem calls go
 * through `FsProbe` so tests can drive every branch.
 *
 * Symlink policy: commands are compared by their real path (symlinks followed).
 * A symlink that points at an allowed binary is allowed, because the same file
 * runs; a symlink (or copy) elsewhere that points at a binary outside the
 * allowlist is refused. What runs is always the allowlisted entry itself: its
 * real file, with argv[0] set to the allowlisted path. The request's own name
 * never reaches the child, so a multi-call binary (busybox) allowed as `true`
 * cannot be reached as `sh` through a symlink named sh.
 *
 * PATH policy: names are looked up in SAFE_PATH only, never in the agent's or
 * the request's PATH. A request may not set PATH at all (see FORBIDDEN_ENV).
 */
import { accessSync, constants, realpathSync, statSync } from "node:fs";
import { basename } from "node:path";
import { RpcError } from "../protocol/errors.ts";

/** The only search path, for the allowlist at start-up, for requests, and the child's PATH. */
export const SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** What a child starts with before the request's env is laid over it; never the agent's own environment. */
export const BASE_ENV: Readonly<Record<string, string>> = { PATH: SAFE_PATH, HOME: "/root", LANG: "C.UTF-8" };

/**
 * Variables a request may not set: each makes an allowlisted program load or run
 * code the allowlist did not name, whatever its arguments.
 * - LD_* (prefix): the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...).
 * - glibc: GLIBC_TUNABLES, GCONV_PATH, LOCPATH, NLSPATH, HOSTALIASES, RESOLV_HOST_CONF.
 * - PATH: an allowlisted script that runs `tar` would run the caller's `tar`
 *   (and file copy into /tmp is on by default). The child gets SAFE_PATH.
 * - shell start-up: BASH_ENV, ENV, SHELLOPTS, BASHOPTS, PS4.
 * - interpreter start-up: Python, Perl, Ruby, Node.js and JVM hooks.
 * Matched case-insensitively.
 */
export const FORBIDDEN_ENV = new Set([
  "PATH",
  "GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
  "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4",
  "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
  "PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB",
  "RUBYLIB", "RUBYOPT",
  "NODE_OPTIONS", "NODE_PATH",
  "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
]);

/** Why `name` may not be set by a request, or null when it may. */
export function forbiddenEnvReason(name: string): string | null {
  const upper = name.toUpperCase();
  if (upper.startsWith("LD_")) return "dynamic loader variables (LD_*) are not allowed";
  if (upper === "PATH") return "PATH is fixed to the agent's safe path";
  if (FORBIDDEN_ENV.has(upper)) return "it makes programs load code from elsewhere";
  return null;
}

/** The child's environment: BASE_ENV plus the request's variables. Throws FORBIDDEN / INVALID_PARAMS. */
export function buildChildEnv(requested: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = { ...BASE_ENV };
  for (const [name, value] of Object.entries(requested)) {
    const reason = forbiddenEnvReason(name);
    if (reason) throw new RpcError("FORBIDDEN", `Environment variable '${name}' is refused: ${reason}`, { variable: name });
    if (value.includes("\0")) throw new RpcError("INVALID_PARAMS", `Invalid params: env.${name} contains a NUL byte`, { variable: name });
    env[name] = value;
  }
  return env;
}

export function checkArgs(args: readonly string[]): void {
  const index = args.findIndex((arg) => arg.includes("\0"));
  if (index >= 0) throw new RpcError("INVALID_PARAMS", `Invalid params: args[${index}] contains a NUL byte`);
}

// ---------------------------------------------------------------- resolution

/** The filesystem calls resolution needs; `nodeFsProbe` is the real one. */
export interface FsProbe {
  /** Symlinks followed; throws when the path does not exist. */
  realpath(path: string): string;
  /** What `path` is once symlinks are followed, or null when it does not exist. */
  kind(path: string): "file" | "directory" | "other" | null;
  /** True when the file is executable (access X_OK). */
  executable(path: string): boolean;
}

export const nodeFsProbe: FsProbe = {
  realpath: (path) => realpathSync(path),
  kind(path) {
    try {
      const stat = statSync(path);
      return stat.isFile() ? "file" : stat.isDirectory() ? "directory" : "other";
    } catch {
      return null;
    }
  },
  executable(path) {
    try {
      accessSync(path, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  },
};

/** A command found on disk: `path` as found (may be a symlink), `real` with every symlink followed. */
export interface ResolvedCommand {
  path: string;
  real: string;
}

export type Resolution = { ok: true; command: ResolvedCommand } | { ok: false; reason: "relative" | "invalid" | "not-found" };

/**
 * Like execvp, but only ever with SAFE_PATH: a name is looked up in its
 * directories, an absolute path is taken as is; relative paths with a slash
 * (./x, ../x, a/b) depend on the cwd and are refused.
 */
export function resolveCommand(command: string, fs: FsProbe = nodeFsProbe): Resolution {
  if (command.length === 0 || command.includes("\0")) return { ok: false, reason: "invalid" };
  const candidates = command.startsWith("/")
    ? [command]
    : command.includes("/")
      ? null
      : SAFE_PATH.split(":").map((dir) => `${dir}/${command}`);
  if (!candidates) return { ok: false, reason: "relative" };
  for (const path of candidates) {
    if (fs.kind(path) !== "file" || !fs.executable(path)) continue;
    try {
      return { ok: true, command: { path, real: fs.realpath(path) } };
    } catch {
      // Vanished between the checks; try the next directory.
    }
  }
  return { ok: false, reason: "not-found" };
}

export interface AllowedEntry extends ResolvedCommand {
  /** As written in allowed_commands. */
  configured: string;
}

export interface Allowlist {
  /** Real path -> the allowlist entries that resolve to it (several for a multi-call binary). */
  byReal: Map<string, AllowedEntry[]>;
  /** Entries that resolved to nothing, with why: logged as warnings and ignored. */
  ignored: { configured: string; reason: string }[];
}

/** Resolves allowed_commands once (at start-up). */
export function buildAllowlist(configured: readonly string[], fs: FsProbe = nodeFsProbe): Allowlist {
  const byReal = new Map<string, AllowedEntry[]>();
  const ignored: Allowlist["ignored"] = [];
  for (const name of configured) {
    const resolution = resolveCommand(name, fs);
    if (!resolution.ok) {
      ignored.push({ configured: name, reason: describeFailure(resolution.reason) });
      continue;
    }
    const entries = byReal.get(resolution.command.real) ?? [];
    if (!entries.some((entry) => entry.path === resolution.command.path)) entries.push({ configured: name, ...resolution.command });
    byReal.set(resolution.command.real, entries);
  }
  return { byReal, ignored };
}

function describeFailure(reason: "relative" | "invalid" | "not-found"): string {
  switch (reason) {
    case "relative":
      return "relative paths are not allowed; use a name or an absolute path";
    case "invalid":
      return "not a valid command";
    case "not-found":
      return `no executable file of that name (searched ${SAFE_PATH})`;
  }
}

/**
 * The allowlist entry a request's command means, or FORBIDDEN. A command that
 * does not exist is refused the same way as one outside the allowlist, so the
 * answer never tells the caller which files exist.
 */
export function authorizeCommand(command: string, allowlist: Allowlist, fs: FsProbe = nodeFsProbe): AllowedEntry {
  const resolution = resolveCommand(command, fs);
  if (!resolution.ok) {
    if (resolution.reason === "relative") {
      throw new RpcError("FORBIDDEN", `Command '${command}' is refused: relative paths are not allowed; use a name or an absolute path`, { command });
    }
    throw notAllowed(command);
  }
  const entries = allowlist.byReal.get(resolution.command.real);
  if (!entries || entries.length === 0) throw notAllowed(command);
  const exact = entries.find((entry) => entry.path === resolution.command.path);
  if (exact) return exact;
  const names = new Set(entries.map((entry) => basename(entry.path)));
  if (names.size === 1) return entries[0]!;
  const requested = basename(resolution.command.path);
  const sameName = entries.find((entry) => basename(entry.path) === requested);
  if (sameName) return sameName;
  throw new RpcError(
    "FORBIDDEN",
    `Command '${command}' is refused: it resolves to ${resolution.command.real}, which several allowed commands share (${[...names].join(", ")}); name one of them`,
    { command },
  );
}

function notAllowed(command: string): RpcError {
  return new RpcError("FORBIDDEN", `Command '${command}' is not in allowed_commands`, { command });
}

/** cwd must be an absolute path to an existing directory; returns it. */
export function checkCwd(cwd: string | undefined, fs: FsProbe = nodeFsProbe): string {
  if (cwd === undefined) return "/";
  if (cwd.includes("\0")) throw new RpcError("INVALID_PARAMS", "Invalid params: cwd contains a NUL byte");
  if (!cwd.startsWith("/")) throw new RpcError("INVALID_PARAMS", `Invalid params: cwd must be an absolute path, got '${cwd}'`);
  const kind = fs.kind(cwd);
  if (kind === null) throw new RpcError("NOT_FOUND", `Working directory '${cwd}' does not exist`, { cwd });
  if (kind !== "directory") throw new RpcError("NOT_FOUND", `Working directory '${cwd}' is not a directory`, { cwd });
  return cwd;
}
