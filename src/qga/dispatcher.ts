/**
 * One QGA request, checked the way qemu's qmp_dispatch does and in its order,
 * so that every malformed request draws qemu-ga's own error class and text.
 */
import type { z } from "zod";
import os from "node:os";
import type { AuditLog } from "../log/audit.ts";
import type { Base64Bytes } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import { hasBase64Bytes } from "../protocol/response-frames.ts";
import type { ExecService, PowerService, UsersService } from "../services.ts";
import { QgaExec } from "./exec.ts";
import { GuestError, UNSUPPORTED } from "../guest/errors.ts";
import { guestFstrim } from "../guest/fstrim.ts";
import { setUserPassword } from "../guest/password.ts";
import { SshKeys } from "../guest/ssh.ts";
import { realtimeNs, setTime, systemTimeNs } from "../guest/time.ts";
import { windowsQgaOsInfo, type WindowsOsInfoProbes } from "../guest/osinfo-windows.ts";
import { windowsQgaInterfaces, type WindowsNetworkProbes } from "../guest/network-windows.ts";
import { guestTimezone } from "../guest/timezone.ts";
import { guestNetworkRoutes } from "../guest/route.ts";
import { guestSuspend } from "../guest/suspend.ts";
import type { QgaFiles } from "./files.ts";
import { qgaPassword } from "./password.ts";
import { qapiMemoryBlockResponses, qapiNames } from "./shape.ts";
import {
  guestCpuStats,
  guestDisks,
  guestDiskStats,
  guestFsInfo,
  guestLoad,
  guestMemoryBlockInfo,
  guestMemoryBlocks,
  guestNetworkInterfaces,
  guestOsInfo,
  guestSetMemoryBlocks,
  guestSetVcpus,
  guestVcpus,
} from "../guest/inventory.ts";
import type { FsFreeze } from "../fsfreeze/fsfreeze.ts";
import type { CallTracker } from "../runtime/calls.ts";
import type { Logger } from "../log/logger.ts";
import { AGENT_VERSION } from "../version.ts";
import { genericError, QgaError } from "./errors.ts";
import { qmpStringify } from "./json.ts";
import { isQgaCommand, QGA_COMMAND_NAMES, QGA_COMMANDS, qapiTypeName, type QgaArgs, type QgaCommandName } from "./schema.ts";

/** A reply line (without its newline), whether a 0xFF goes before it, or nothing for a no-reply command. */
export interface QgaReply {
  line: string;
  delimited: boolean;
  /** File bytes that stand in `line` as BINARY_MARK, in order (guest-file-read). */
  binary?: Base64Bytes[];
}

const TOP_LEVEL_MEMBERS = new Set(["execute", "arguments", "id"]);

/** guest-shutdown's modes and the power action each takes. */
const SHUTDOWN_MODES = new Map([
  ["powerdown", "poweroff"],
  ["halt", "halt"],
  ["reboot", "reboot"],
] as const satisfies readonly (readonly [string, "poweroff" | "halt" | "reboot"])[]) as Map<string, "poweroff" | "halt" | "reboot">;

export interface QgaDispatcherDeps {
  audit: AuditLog;
  logger: Logger;
  users: UsersService;
  exec: ExecService;
  /** [security] enable_exec: off answers qemu-ga's "has been disabled", as its -b does. */
  execEnabled: boolean;
  /** [limits] exec_records_max. */
  execRecordsMax: number;
  files: QgaFiles;
  /** [security] enable_file_copy: the guest-file-* commands are switched with it. */
  filesEnabled: boolean;
  power: PowerService;
  /** Shared with the native protocol: while frozen, only FROZEN_SAFE commands run. */
  fsfreeze: FsFreeze;
  /** Shared with the native protocol: a stopping agent finishes these and takes no more. */
  calls: CallTracker;
  /** [qga] block_rpcs / allow_rpcs. */
  blockRpcs: readonly string[];
  allowRpcs: readonly string[];
  /** Defaults to the running OS; tests pass "win32" to check what Windows answers. */
  platform?: NodeJS.Platform;
  /** Windows guest-get-osinfo's OS calls; tests inject a registry. */
  windowsOsInfoProbes?: WindowsOsInfoProbes;
  /** Windows guest-network-get-interfaces' OS calls; tests inject adapters. */
  windowsNetworkProbes?: WindowsNetworkProbes;
  /** [security] enable_system_changes: guest-set-time, -set-vcpus, -set-memory-blocks, -fstrim, -suspend-*. */
  systemChangesEnabled: boolean;
  /** [security] enable_credentials: guest-set-user-password, -ssh-add- and -ssh-remove-authorized-keys. */
  credentialsEnabled: boolean;
  /** Whose ~/.ssh the guest-ssh-* commands edit; tests point it at a scratch home. */
  sshKeys?: SshKeys;
}

/** What qemu-ga serves while filesystems are frozen: nothing that could write to them. */
const FROZEN_SAFE = new Set<QgaCommandName>(["guest-ping", "guest-info", "guest-sync", "guest-sync-delimited", "guest-fsfreeze-status", "guest-fsfreeze-thaw"]);
/** The security policy's switches (the native methods they match follow the same ones). */
const SYSTEM_CHANGES = new Set<QgaCommandName>([
  "guest-set-time", "guest-set-vcpus", "guest-set-memory-blocks", "guest-fstrim",
  "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
]);
const CREDENTIALS = new Set<QgaCommandName>(["guest-set-user-password", "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"]);

/** What answers on Windows; the rest read Linux's /proc and /sys and say "not currently supported", as qemu-ga does for what it lacks there. */
const WINDOWS_SERVED = new Set<QgaCommandName>([
  "guest-sync-delimited", "guest-sync", "guest-ping", "guest-info",
  "guest-get-osinfo", "guest-get-host-name", "guest-get-time", "guest-get-users", "guest-network-get-interfaces",
  "guest-shutdown", "guest-exec", "guest-exec-status",
  "guest-file-open", "guest-file-read", "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-file-close",
]);

export class QgaDispatcher {
  private readonly exec: QgaExec;
  private readonly sshKeys: SshKeys;

  private readonly windows: boolean;

  constructor(private readonly deps: QgaDispatcherDeps) {
    this.exec = new QgaExec(deps.exec, deps.execRecordsMax);
    this.windows = (deps.platform ?? process.platform) === "win32";
    this.sshKeys = deps.sshKeys ?? new SshKeys();
  }

  /** Switched off by config or policy (see isConfigured), or for the time filesystems are frozen. */
  isEnabled(command: QgaCommandName): boolean {
    return this.isConfigured(command) && !this.frozenOut(command);
  }

  private frozenOut(command: QgaCommandName): boolean {
    return this.deps.fsfreeze.status === "frozen" && !FROZEN_SAFE.has(command);
  }

  /** The security policy first, then the config's block or allow list (which can switch off even guest-sync, as qemu-ga's). */
  private isConfigured(command: QgaCommandName): boolean {
    if ((command === "guest-exec" || command === "guest-exec-status") && !this.deps.execEnabled) return false;
    if (command.startsWith("guest-file-") && !this.deps.filesEnabled) return false;
    if (SYSTEM_CHANGES.has(command) && !this.deps.systemChangesEnabled) return false;
    if (CREDENTIALS.has(command) && !this.deps.credentialsEnabled) return false;
    if (this.deps.allowRpcs.length > 0) return this.deps.allowRpcs.includes(command);
    return !this.deps.blockRpcs.includes(command);
  }

  /** Synchronous for commands that are (most): a reply without a promise costs a ping less. */
  handle(message: unknown, transport: string): QgaReply | null | Promise<QgaReply | null> {
    const started = performance.now();
    let command = "";
    let id: unknown;
    const { calls } = this.deps;
    calls.begin();
    let ended = false;
    const end = () => {
      if (!ended) calls.end();
      ended = true;
    };
    const succeed = (result: unknown): QgaReply | null => {
      end();
      this.audit(command, id, transport, started);
      if (!QGA_COMMANDS[command as QgaCommandName].successResponse) return null;
      const reply = id === undefined ? { return: result } : { return: result, id };
      const delimited = command === "guest-sync-delimited";
      if (!hasBase64Bytes(result)) return { line: qmpStringify(reply), delimited };
      const binary: Base64Bytes[] = [];
      return { line: qmpStringify(reply, binary), delimited, binary };
    };
    const fail = (error: unknown): QgaReply => {
      end();
      const qgaError =
        error instanceof QgaError
          ? error
          : error instanceof GuestError
            ? genericError(error.qemuDesc)
            : error instanceof RpcError
              ? genericError(error.message)
              : this.internal(command, error);
      this.audit(command, id, transport, started, qgaError);
      return { line: errorLine(qgaError, id), delimited: false };
    };
    try {
      if (typeof message !== "object" || message === null || Array.isArray(message)) throw genericError("QMP input must be a JSON object");
      const request = message as Record<string, unknown>;
      for (const member of Object.keys(request)) {
        if (!TOP_LEVEL_MEMBERS.has(member)) throw genericError(`QMP input member '${member}' is unexpected`);
      }
      id = request.id;
      if (!("execute" in request)) throw genericError("QMP input lacks member 'execute'");
      if (typeof request.execute !== "string") throw genericError("QMP input member 'execute' must be a string");
      command = request.execute;
      const args = request.arguments ?? {};
      if (typeof args !== "object" || args === null || Array.isArray(args)) throw genericError("QMP input member 'arguments' must be an object");
      if (!isQgaCommand(command)) throw new QgaError("CommandNotFound", `The command ${command} has not been found`);
      // Frozen first: qemu-ga's freeze re-disables blocked commands with its reason.
      if (this.frozenOut(command)) throw new QgaError("CommandNotFound", `Command ${command} has been disabled: the agent is in frozen state`);
      if (!this.isConfigured(command)) throw new QgaError("CommandNotFound", `Command ${command} has been disabled`);
      if (this.windows && !WINDOWS_SERVED.has(command)) throw genericError(UNSUPPORTED);
      if (calls.stopping) throw genericError("the agent is stopping: no new commands are taken");
      const result = this.run(command, args);
      return result instanceof Promise ? result.then(succeed).catch(fail) : succeed(result);
    } catch (error) {
      return fail(error);
    }
  }

  /** The command's result, or a promise of it for the commands that wait on something. */
  private run(command: QgaCommandName, rawArgs: object): unknown {
    const parsed = parseArgs(QGA_COMMANDS[command].args, rawArgs);
    /** The validated arguments of the command at hand, typed from its schema. */
    const args = <C extends QgaCommandName>(_command: C) => parsed as QgaArgs<C>;
    switch (command) {
      case "guest-sync-delimited":
      case "guest-sync":
        return args(command).id;
      case "guest-ping":
        return {};
      case "guest-get-host-name":
        return { "host-name": os.hostname() };
      case "guest-get-time":
        // qemu-ga's precision: microseconds on Linux (g_get_real_time), 100 ns on Windows (a FILETIME).
        return this.windows ? systemTimeNs() : (realtimeNs() / 1000n) * 1000n;
      case "guest-set-time": {
        const time = args(command).time;
        return setTime(time === undefined ? undefined : BigInt(time)).then(() => ({}));
      }
      case "guest-get-timezone":
        return guestTimezone();
      case "guest-get-osinfo":
        return this.windows ? windowsQgaOsInfo(this.deps.windowsOsInfoProbes) : qapiNames(guestOsInfo());
      case "guest-get-users":
        return this.deps.users.qgaUsers();
      case "guest-get-vcpus":
        return qapiNames(guestVcpus());
      case "guest-set-vcpus":
        return guestSetVcpus(args(command).vcpus.map((vcpu) => ({ logical_id: vcpu["logical-id"], online: vcpu.online })));
      case "guest-get-load":
        return guestLoad();
      case "guest-network-get-interfaces":
        return this.windows ? windowsQgaInterfaces(this.deps.windowsNetworkProbes) : qapiNames(guestNetworkInterfaces());
      case "guest-network-get-route":
        return guestNetworkRoutes();
      case "guest-get-cpustats":
        return guestCpuStats();
      case "guest-get-diskstats":
        return qapiNames(guestDiskStats());
      case "guest-get-fsinfo":
        return qapiNames(guestFsInfo());
      case "guest-get-disks":
        return qapiNames(guestDisks());
      case "guest-get-memory-blocks":
        return qapiNames(guestMemoryBlocks());
      case "guest-get-memory-block-info":
        return guestMemoryBlockInfo();
      case "guest-set-memory-blocks":
        return qapiMemoryBlockResponses(guestSetMemoryBlocks(args(command)["mem-blks"].map((block) => ({ phys_index: block["phys-index"], online: block.online }))));
      case "guest-file-open": {
        const { path, mode } = args(command);
        return this.deps.files.open(path, mode);
      }
      case "guest-file-close":
        return this.deps.files.close(args(command).handle);
      case "guest-file-read": {
        const { handle, count } = args(command);
        return this.deps.files.read(handle, count);
      }
      case "guest-file-write": {
        const { handle, "buf-b64": data, count } = args(command);
        return this.deps.files.write(handle, data, count);
      }
      case "guest-file-seek": {
        const { handle, offset, whence } = args(command);
        return this.deps.files.seek(handle, offset, whence);
      }
      case "guest-file-flush":
        return this.deps.files.flush(args(command).handle);
      case "guest-shutdown": {
        const mode = args(command).mode ?? "powerdown";
        const action = SHUTDOWN_MODES.get(mode);
        if (!action) throw genericError("mode is invalid (valid values are: halt|powerdown|reboot"); // sic: qemu-ga's text
        return Promise.resolve(this.deps.power.request(action, { confirm: true, force: false, delay_seconds: 0, message: "hypervisor initiated shutdown" })).then(() => ({}));
      }
      case "guest-suspend-disk":
        return guestSuspend("disk", this.deps);
      case "guest-suspend-ram":
        return guestSuspend("ram", this.deps);
      case "guest-suspend-hybrid":
        return guestSuspend("hybrid", this.deps);
      case "guest-exec":
        return this.exec.start(args(command));
      case "guest-exec-status":
        return this.exec.status(args(command).pid);
      case "guest-fstrim":
        return guestFstrim(args(command).minimum);
      case "guest-fsfreeze-status":
        return this.deps.fsfreeze.status;
      case "guest-fsfreeze-freeze":
        return this.deps.fsfreeze.freeze();
      case "guest-fsfreeze-freeze-list":
        return this.deps.fsfreeze.freeze(args(command).mountpoints);
      case "guest-fsfreeze-thaw":
        return this.deps.fsfreeze.thaw();
      case "guest-set-user-password": {
        const { username, password, crypted } = args(command);
        return setUserPassword(username, qgaPassword(password), crypted).then(() => ({}));
      }
      case "guest-ssh-get-authorized-keys":
        return this.sshKeys.get(args(command).username);
      case "guest-ssh-add-authorized-keys": {
        const { username, keys, reset } = args(command);
        return this.sshKeys.add(username, keys, reset ?? false);
      }
      case "guest-ssh-remove-authorized-keys": {
        const { username, keys } = args(command);
        return this.sshKeys.remove(username, keys);
      }
      case "guest-info":
        return {
          version: AGENT_VERSION,
          supported_commands: QGA_COMMAND_NAMES.map((name) => ({ name, enabled: this.isEnabled(name), "success-response": QGA_COMMANDS[name].successResponse })),
        };
    }
  }

  private internal(command: string, error: unknown): QgaError {
    this.deps.logger.error("QGA command failed", { command, error: String(error) });
    return genericError(`${command}: ${(error as Error)?.message ?? String(error)}`);
  }

  private audit(command: string, id: unknown, transport: string, started: number, error?: QgaError): void {
    this.deps.audit.record({
      method: command,
      id: typeof id === "string" || typeof id === "number" ? id : id === undefined ? undefined : null,
      transport,
      outcome: error ? "error" : "ok",
      code: undefined,
      duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
    });
  }
}

/** qemu's reply to a request it could not run; the id is echoed when the request had one. */
export function errorLine(error: QgaError, id?: unknown): string {
  const body = { class: error.errorClass, desc: error.desc };
  return qmpStringify(id === undefined ? { error: body } : { error: body, id });
}

/** Validates arguments, naming the first bad one as qemu's input visitor does. */
function parseArgs(schema: z.ZodType, args: object): unknown {
  const parsed = schema.safeParse(args);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const name = (path: PropertyKey[]) =>
    path.reduce<string>((out, part) => (typeof part === "number" ? `${out}[${part}]` : out ? `${out}.${String(part)}` : String(part)), "");
  if (issue.code === "unrecognized_keys") throw genericError(`Parameter '${name([...issue.path, issue.keys[0]!])}' is unexpected`);
  if (issue.code === "invalid_union" || issue.code === "invalid_value") {
    const given = issue.path.reduce<unknown>((value, key) => (value as Record<PropertyKey, unknown> | undefined)?.[key], args);
    if (typeof given === "string") throw genericError(`Parameter '${name(issue.path)}' does not accept value '${given}'`);
  }
  if (issue.code === "invalid_type") {
    if (/received undefined$/.test(issue.message)) throw genericError(`Parameter '${name(issue.path)}' is missing`);
    throw genericError(`Invalid parameter type for '${name(issue.path)}', expected: ${qapiTypeName(issue.expected)}`);
  }
  throw genericError(`Parameter '${name(issue.path)}' is invalid: ${issue.message}`);
}
