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
 *
 * What differs between operating systems (search path, path syntax, case,
 * environment) is a `CommandPlatform`: POSIX_COMMANDS here, Windows's in windows.ts.
 */
import { accessSync, constants, realpathSync, statSync } from "node:fs";
import { posix } from "node:path";
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
export function buildChildEnv(requested: Record<string, string>, platform: CommandPlatform = POSIX_COMMANDS): Record<string, string> {
  const env: Record<string, string> = { ...platform.baseEnv };
  for (const [name, value] of Object.entries(requested)) {
    const reason = platform.forbiddenEnvReason(name);
    if (reason) throw new RpcError("FORBIDDEN", `Environment variable '${name}' is refused: ${reason}`, { variable: name });
    if (value.includes("\0")) throw new RpcError("INVALID_PARAMS", `Invalid params: env.${name} contains a NUL byte`, { variable: name });
    // Windows names are case-insensitive: the request's TEMP replaces the base Temp rather than sitting beside it.
    if (platform.caseInsensitive) for (const key of Object.keys(env)) if (key.toUpperCase() === name.toUpperCase()) delete env[key];
    env[name] = value;
  }
  return env;
}

/** How commands, paths and environments look on one operating system. */
export interface CommandPlatform {
  /** The only search path, as the child's PATH too. */
  safePath: string;
  baseEnv: Readonly<Record<string, string>>;
  forbiddenEnvReason(name: string): string | null;
  /** The files a command may mean, in order, or why its form is refused (a relative path with a directory part depends on the cwd). */
  candidates(command: string): string[] | { refused: string };
  /** Paths and names compare case-insensitively (Windows). */
  caseInsensitive: boolean;
  basename(path: string): string;
  /** Why `cwd` is not an acceptable absolute directory path, or null. */
  cwdProblem(cwd: string): string | null;
  defaultCwd: string;
}

export const POSIX_COMMANDS: CommandPlatform = {
  safePath: SAFE_PATH,
  baseEnv: BASE_ENV,
  forbiddenEnvReason,
  candidates: (command) =>
    command.startsWith("/") ? [command] : command.includes("/") ? { refused: RELATIVE } : SAFE_PATH.split(":").map((dir) => `${dir}/${command}`),
  caseInsensitive: false,
  basename: (path) => posix.basename(path),
  cwdProblem: (cwd) => (cwd.startsWith("/") ? null : "must be an absolute path"),
  defaultCwd: "/",
};

/** Real paths as the allowlist compares them. */
function pathKey(path: string, platform: CommandPlatform): string {
  return platform.caseInsensitive ? path.toLowerCase() : path;
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
    // A name is looked for in each SAFE_PATH directory in turn, so most lookups miss: without throwIfNoEntry each
    // miss threw, and an exception thrown that deep cost ~0.2 ms in the TCG guest, a tenth of an exec of `true`.
    try {
      const stat = statSync(path, { throwIfNoEntry: false });
      if (!stat) return null;
      return stat.isFile() ? "file" : stat.isDirectory() ? "directory" : "other";
    } catch {
      return null; // ENOTDIR, EACCES, ELOOP: not there either, as far as a lookup is concerned.
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

export type Resolution = { ok: true; command: ResolvedCommand } | { ok: false; reason: "invalid" | "not-found" } | { ok: false; reason: "refused"; detail: string };

const RELATIVE = "relative paths are not allowed; use a name or an absolute path";

/**
 * Like execvp, but only ever with SAFE_PATH: a name is looked up in its
 * directories, an absolute path is taken as is; relative paths with a slash
 * (./x, ../x, a/b) depend on the cwd and are refused.
 */
export function resolveCommand(command: string, fs: FsProbe = nodeFsProbe, platform: CommandPlatform = POSIX_COMMANDS): Resolution {
  if (command.length === 0 || command.includes("\0")) return { ok: false, reason: "invalid" };
  const candidates = platform.candidates(command);
  if (!Array.isArray(candidates)) return { ok: false, reason: "refused", detail: candidates.refused };
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
export function buildAllowlist(configured: readonly string[], fs: FsProbe = nodeFsProbe, platform: CommandPlatform = POSIX_COMMANDS): Allowlist {
  const byReal = new Map<string, AllowedEntry[]>();
  const ignored: Allowlist["ignored"] = [];
  for (const name of configured) {
    const resolution = resolveCommand(name, fs, platform);
    if (!resolution.ok) {
      ignored.push({ configured: name, reason: resolution.reason === "refused" ? resolution.detail : describeFailure(resolution.reason, platform) });
      continue;
    }
    const key = pathKey(resolution.command.real, platform);
    const entries = byReal.get(key) ?? [];
    if (!entries.some((entry) => pathKey(entry.path, platform) === pathKey(resolution.command.path, platform))) entries.push({ configured: name, ...resolution.command });
    byReal.set(key, entries);
  }
  return { byReal, ignored };
}

function describeFailure(reason: "invalid" | "not-found", platform: CommandPlatform): string {
  switch (reason) {
    case "invalid":
      return "not a valid command";
    case "not-found":
      return `no executable file of that name (searched ${platform.safePath})`;
  }
}

/**
 * The allowlist entry a request's command means, or FORBIDDEN. A command that
 * does not exist is refused the same way as one outside the allowlist, so the
 * answer never tells the caller which files exist.
 */
export function authorizeCommand(command: string, allowlist: Allowlist, fs: FsProbe = nodeFsProbe, platform: CommandPlatform = POSIX_COMMANDS): AllowedEntry {
  const resolution = resolveCommand(command, fs, platform);
  if (!resolution.ok) {
    if (resolution.reason === "refused") throw new RpcError("FORBIDDEN", `Command '${command}' is refused: ${resolution.detail}`, { command });
    throw notAllowed(command);
  }
  const entries = allowlist.byReal.get(pathKey(resolution.command.real, platform));
  if (!entries || entries.length === 0) throw notAllowed(command);
  const key = (path: string) => pathKey(path, platform);
  const exact = entries.find((entry) => key(entry.path) === key(resolution.command.path));
  if (exact) return exact;
  const names = new Set(entries.map((entry) => key(platform.basename(entry.path))));
  if (names.size === 1) return entries[0]!;
  const requested = key(platform.basename(resolution.command.path));
  const sameName = entries.find((entry) => key(platform.basename(entry.path)) === requested);
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
export function checkCwd(cwd: string | undefined, fs: FsProbe = nodeFsProbe, platform: CommandPlatform = POSIX_COMMANDS): string {
  if (cwd === undefined) return platform.defaultCwd;
  if (cwd.includes("\0")) throw new RpcError("INVALID_PARAMS", "Invalid params: cwd contains a NUL byte");
  const problem = platform.cwdProblem(cwd);
  if (problem) throw new RpcError("INVALID_PARAMS", `Invalid params: cwd ${problem}, got '${cwd}'`);
  const kind = fs.kind(cwd);
  if (kind === null) throw new RpcError("NOT_FOUND", `Working directory '${cwd}' does not exist`, { cwd });
  if (kind !== "directory") throw new RpcError("NOT_FOUND", `Working directory '${cwd}' is not a directory`, { cwd });
  return cwd;
}
