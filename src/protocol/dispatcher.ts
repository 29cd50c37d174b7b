/**
 * Validates one JSON-RPC request against the method schemas and runs its
 * handler. Every call is audited; no error escapes as an exception.
 */
import type { AgentConfig } from "../config/schema.ts";
import { ping } from "../handlers/ping.ts";
import { currentOsIdentity, getInfo } from "../info/info.ts";
import type { OsIdentity } from "../info/os-identity.ts";
import type { AuditLog } from "../log/audit.ts";
import type { Logger } from "../log/logger.ts";
import { describeIssues, fieldIssues, isMethodName, METHOD_NAMES, METHODS, type MethodName, type Params } from "../schema/methods.ts";
import { errorCode, RpcError } from "./errors.ts";
import { errorResponse, isValidId, type RequestId, type Response } from "./jsonrpc.ts";
import type { RequestHandler } from "./session.ts";

export interface DispatcherDeps {
  config: AgentConfig;
  audit: AuditLog;
  logger: Logger;
  /** The platform probe behind get_info; tests inject their own. */
  osIdentity?: () => OsIdentity;
}

export class Dispatcher implements RequestHandler {
  private readonly methodTable: { name: string; enabled: boolean }[];

  constructor(private readonly deps: DispatcherDeps) {
    this.methodTable = METHOD_NAMES.map((name) => ({ name, enabled: this.isEnabled(name) }));
  }

  /** Later methods (exec, file copy) are switched by [security]; the core ones are always on. */
  isEnabled(name: MethodName): boolean {
    switch (name) {
      case "ping":
      case "get_info":
        return true;
    }
  }

  /**
   * One request object (already JSON-parsed). Returns the response, or null for
   * a notification. Synchronous handlers answer without a promise.
   */
  handle(message: unknown, transport: string): Response | null | Promise<Response | null> {
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
    const finish = (response: Response): Response | null => {
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

    try {
      const result = this.invoke(method, params);
      if (result instanceof Promise) {
        return result.then((value) => finish({ jsonrpc: "2.0", id, result: value }), fail);
      }
      return finish({ jsonrpc: "2.0", id, result });
    } catch (error) {
      return fail(error);
    }
  }

  private invoke(method: string, params: unknown): unknown {
    if (!isMethodName(method)) throw new RpcError("METHOD_NOT_FOUND", `Method not found: '${method}'`, { method });
    if (!this.isEnabled(method)) throw new RpcError("FORBIDDEN", `Method '${method}' is disabled by the agent's config`, { method });
    switch (method) {
      case "ping":
        return ping(this.parseParams("ping", params));
      case "get_info":
        this.parseParams("get_info", params);
        return getInfo(this.methodTable, this.deps.osIdentity ?? currentOsIdentity);
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
