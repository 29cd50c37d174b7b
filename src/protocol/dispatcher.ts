/**
 * Validates one JSON-RPC request against the method schemas and runs its
 * handler. Every call is audited; no error escapes as an exception.
 */
import type { AgentConfig } from "../config/schema.ts";
import { GuestError } from "../guest/errors.ts";
import { ping } from "../handlers/ping.ts";
import { currentOsIdentity, getInfo } from "../info/info.ts";
import type { OsIdentity } from "../info/os-identity.ts";
import type { AuditLog } from "../log/audit.ts";
import type { Logger } from "../log/logger.ts";
import { GUEST_METHODS } from "../schema/guest.ts";
import { describeIssues, fieldIssues, isMethodName, METHOD_NAMES, METHODS, type MethodName, type Params } from "../schema/methods.ts";
import type { CallContext, Services } from "../services.ts";
import type { RequestAuthenticator } from "../security/hmac.ts";
import { errorCode, RpcError } from "./errors.ts";
import { errorResponse, isValidId, type RequestId, type Response } from "./jsonrpc.ts";
import type { RequestHandler } from "./session.ts";

export interface DispatcherDeps {
  config: AgentConfig;
  audit: AuditLog;
  logger: Logger;
  services: Services;
  /** The platform probe behind get_info; tests inject their own. */
  osIdentity?: () => OsIdentity;
  /** Defaults to the running OS; tests pass "win32" to check what Windows answers. */
  platform?: NodeJS.Platform;
  /** [security] hmac_key_file: when set, every request must be signed. */
  authenticator?: RequestAuthenticator;
}

/** Implemented for Linux guests only so far: Windows answers UNSUPPORTED_OS. */
const LINUX_ONLY = new Set<MethodName>([
  "upload_start", "upload_chunk", "upload_commit", "upload_abort", "copy_archive_to_guest",
  "fsfreeze_status", "fsfreeze_freeze", "fsfreeze_thaw",
  ...(Object.keys(GUEST_METHODS) as (keyof typeof GUEST_METHODS)[]),
]);

/** A guest operation's failure, as the native protocol answers it (QGA answers the same failure in qemu-ga's words). */
const GUEST_ERROR_CODES = { failed: "OPERATION_FAILED", not_found: "NOT_FOUND", invalid: "INVALID_PARAMS", unsupported: "UNSUPPORTED" } as const;

/** What runs while filesystems are frozen: reads of /proc, /sys, utmp and the clock, and the thaw (writes would block the agent). */
const FROZEN_SAFE = new Set<MethodName>([
  "ping", "get_info", "get_metrics", "get_users", "fsfreeze_status", "fsfreeze_thaw",
  "get_time", "get_timezone", "get_os_info", "get_vcpus", "get_network_interfaces", "get_network_routes", "get_fsinfo", "get_disks", "get_diskstats",
  "get_memory_blocks", "get_memory_block_info",
]);

export class Dispatcher implements RequestHandler {
  private readonly methodTable: { name: string; enabled: boolean }[];
  private readonly platform: NodeJS.Platform;

  constructor(private readonly deps: DispatcherDeps) {
    this.platform = deps.platform ?? process.platform;
    this.methodTable = METHOD_NAMES.map((name) => ({ name, enabled: this.isEnabled(name) }));
  }

  /** exec and file copy are switched by [security]; the rest are always on. */
  isEnabled(name: MethodName): boolean {
    const { security } = this.deps.config;
    switch (name) {
      case "set_time":
      case "set_vcpus":
      case "set_memory_blocks":
      case "fstrim":
      case "suspend":
        return security.enable_system_changes;
      case "set_user_password":
      case "ssh_add_authorized_keys":
      case "ssh_remove_authorized_keys":
        return security.enable_credentials;
      case "exec":
      case "exec_start":
      case "exec_status":
      case "exec_kill":
        return security.enable_exec;
      case "copy_to_guest":
      case "copy_from_guest":
      case "upload_start":
      case "upload_chunk":
      case "upload_commit":
      case "upload_abort":
      case "copy_archive_to_guest":
        return security.enable_file_copy;
      default:
        return true;
    }
  }

  /**
   * One request object (already JSON-parsed). Returns the response, or null for
   * a notification. Synchronous handlers answer without a promise.
   */
  handle(message: unknown, context: CallContext): Response | null | Promise<Response | null> {
    const transport = context.transport;
    if (typeof message !== "object" || message === null || Array.isArray(message)) {
      return this.reject(null, "Invalid Request: expected a JSON object", transport);
    }
    const request = message as Record<string, unknown>;
    const isNotification = !("id" in request);
    const id = isNotification ? null : request.id;
    if (!isValidId(id)) return this.reject(null, "Invalid Request: 'id' must be a string, a number or null", transport);
    if (request.jsonrpc !== "2.0") return this.reject(id, "Invalid Request: 'jsonrpc' must be \"2.0\"", transport);
    if (typeof request.method !== "string") return this.reject(id, "Invalid Request: 'method' must be a string", transport);
    const params = request.params;
    if (params !== undefined && (typeof params !== "object" || params === null)) {
      return this.reject(id, "Invalid Request: 'params' must be an object or an array", transport);
    }

    const started = performance.now();
    const method = request.method;
    const { calls } = this.deps.services;
    const finish = (response: Response): Response | null => {
      calls.end();
      this.deps.audit.record({
        method,
        id: isNotification ? undefined : id,
        transport,
        outcome: "error" in response ? "error" : "ok",
        code: "error" in response ? response.error.code : undefined,
        duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
      });
      return isNotification ? null : response;
    };
    const fail = (error: unknown): Response | null => finish(this.toErrorResponse(id, method, error));

    calls.begin();
    try {
      if (calls.stopping) throw new RpcError("STOPPING", "The agent is stopping: no new calls are taken", { method });
      this.deps.authenticator?.verify(request);
      const result = this.invoke(method, params, context);
      if (result instanceof Promise) {
        return result.then((value) => finish({ jsonrpc: "2.0", id, result: value }), fail);
      }
      return finish({ jsonrpc: "2.0", id, result });
    } catch (error) {
      return fail(error);
    }
  }

  private invoke(method: string, params: unknown, context: CallContext): unknown {
    if (!isMethodName(method)) throw new RpcError("METHOD_NOT_FOUND", `Method not found: '${method}'`, { method });
    if (!this.isEnabled(method)) throw new RpcError("FORBIDDEN", `Method '${method}' is disabled by the agent's config`, { method });
    if (this.platform === "win32" && LINUX_ONLY.has(method)) {
      throw new RpcError("UNSUPPORTED_OS", `Method '${method}' is not supported on Windows guests yet`, { method, os: "windows" });
    }
    const { exec, files, metrics, users, power, guest, fsfreeze } = this.deps.services;
    if (fsfreeze.status === "frozen" && !FROZEN_SAFE.has(method)) {
      throw new RpcError("FROZEN", `Method '${method}' is refused while filesystems are frozen: call fsfreeze_thaw first`, { method });
    }
    switch (method) {
      case "ping":
        return ping(this.parseParams("ping", params));
      case "get_info":
        this.parseParams("get_info", params);
        return getInfo(this.methodTable, this.deps.osIdentity ?? currentOsIdentity);
      case "get_metrics":
        return metrics.collect(this.parseParams("get_metrics", params));
      case "get_users":
        this.parseParams("get_users", params);
        return users.list();
      case "shutdown":
        return power.request("poweroff", this.parseParams("shutdown", params));
      case "reboot":
        return power.request("reboot", this.parseParams("reboot", params));
      case "exec":
        return exec.run(this.parseParams("exec", params));
      case "exec_start":
        return exec.start(this.parseParams("exec_start", params), context);
      case "exec_status":
        return exec.status(this.parseParams("exec_status", params));
      case "exec_kill":
        return exec.kill(this.parseParams("exec_kill", params));
      case "copy_to_guest":
        return files.copyTo(this.parseParams("copy_to_guest", params));
      case "copy_from_guest":
        return files.copyFrom(this.parseParams("copy_from_guest", params));
      case "upload_start":
        return files.uploadStart(this.parseParams("upload_start", params));
      case "upload_chunk":
        return files.uploadChunk(this.parseParams("upload_chunk", params));
      case "upload_commit":
        return files.uploadCommit(this.parseParams("upload_commit", params));
      case "upload_abort":
        return files.uploadAbort(this.parseParams("upload_abort", params));
      case "copy_archive_to_guest":
        return files.unpackArchive(this.parseParams("copy_archive_to_guest", params));
      case "get_time":
        this.parseParams("get_time", params);
        return guest.getTime();
      case "set_time":
        return guest.setTime(this.parseParams("set_time", params));
      case "get_timezone":
        this.parseParams("get_timezone", params);
        return guest.getTimezone();
      case "get_os_info":
        this.parseParams("get_os_info", params);
        return guest.getOsInfo();
      case "get_vcpus":
        this.parseParams("get_vcpus", params);
        return guest.getVcpus();
      case "set_vcpus":
        return guest.setVcpus(this.parseParams("set_vcpus", params));
      case "get_network_interfaces":
        this.parseParams("get_network_interfaces", params);
        return guest.getNetworkInterfaces();
      case "get_network_routes":
        this.parseParams("get_network_routes", params);
        return guest.getNetworkRoutes();
      case "get_fsinfo":
        this.parseParams("get_fsinfo", params);
        return guest.getFsinfo();
      case "get_disks":
        this.parseParams("get_disks", params);
        return guest.getDisks();
      case "get_diskstats":
        this.parseParams("get_diskstats", params);
        return guest.getDiskstats();
      case "get_memory_blocks":
        this.parseParams("get_memory_blocks", params);
        return guest.getMemoryBlocks();
      case "get_memory_block_info":
        this.parseParams("get_memory_block_info", params);
        return guest.getMemoryBlockInfo();
      case "set_memory_blocks":
        return guest.setMemoryBlocks(this.parseParams("set_memory_blocks", params));
      case "fstrim":
        return guest.fstrim(this.parseParams("fstrim", params));
      case "suspend":
        return guest.suspend(this.parseParams("suspend", params));
      case "set_user_password":
        return guest.setUserPassword(this.parseParams("set_user_password", params));
      case "ssh_get_authorized_keys":
        return guest.sshGetAuthorizedKeys(this.parseParams("ssh_get_authorized_keys", params));
      case "ssh_add_authorized_keys":
        return guest.sshAddAuthorizedKeys(this.parseParams("ssh_add_authorized_keys", params));
      case "ssh_remove_authorized_keys":
        return guest.sshRemoveAuthorizedKeys(this.parseParams("ssh_remove_authorized_keys", params));
      case "fsfreeze_status":
        this.parseParams("fsfreeze_status", params);
        return { status: fsfreeze.status };
      case "fsfreeze_freeze":
        return fsfreeze.freeze(this.parseParams("fsfreeze_freeze", params).mountpoints).then((frozen) => ({ frozen }));
      case "fsfreeze_thaw":
        this.parseParams("fsfreeze_thaw", params);
        return fsfreeze.thaw().then((thawed) => ({ thawed }));
    }
  }

  private parseParams<M extends MethodName>(method: M, params: unknown): Params<M> {
    if (Array.isArray(params)) {
      throw new RpcError("INVALID_PARAMS", "Invalid params: this agent takes named params (a JSON object), not an array");
    }
    const parsed = METHODS[method].params.safeParse(params ?? {});
    if (!parsed.success) {
      throw new RpcError("INVALID_PARAMS", `Invalid params: ${describeIssues(parsed.error)}`, { issues: fieldIssues(parsed.error) });
    }
    return parsed.data as Params<M>;
  }

  private toErrorResponse(id: RequestId, method: string, error: unknown): Response {
    if (error instanceof RpcError) return errorResponse(id, error.code, error.message, error.data);
    if (error instanceof GuestError) return errorResponse(id, errorCode(GUEST_ERROR_CODES[error.reason]), error.message);
    this.deps.logger.error("handler failed", { method, error: String(error) });
    return errorResponse(id, errorCode("INTERNAL_ERROR"), `Internal error: ${(error as Error)?.message ?? String(error)}`);
  }

  /** An envelope so broken that no method ran: audited as such, always answered (spec: id null when unknown). */
  private reject(id: RequestId, message: string, transport: string): Response {
    const code = errorCode("INVALID_REQUEST");
    this.deps.audit.record({ method: "", id, transport, outcome: "error", code, duration_ms: 0 });
    return errorResponse(id, code, message);
  }
}
