/**
 * JSON-RPC 2.0 error codes: the standard ones and the agent's application table
 * (-32000..-32099). docs/protocol.md is generated from APPLICATION_ERRORS, so the
 * table here is the contract hosts program against.
 */

export const JSONRPC_ERRORS = {
  PARSE_ERROR: { code: -32700, meaning: "Invalid JSON or invalid UTF-8 in a frame; the stream stays in sync." },
  INVALID_REQUEST: { code: -32600, meaning: "The JSON is not a valid JSON-RPC 2.0 request object (or is an empty batch)." },
  METHOD_NOT_FOUND: { code: -32601, meaning: "No method of that name exists." },
  INVALID_PARAMS: { code: -32602, meaning: "The params do not match the method's schema; the message names the field." },
  INTERNAL_ERROR: { code: -32603, meaning: "An unexpected failure inside the agent; the agent keeps serving." },
} as const;

export const APPLICATION_ERRORS = {
  OPERATION_FAILED: { code: -32000, meaning: "The operating system refused or failed the operation; data.errno names the OS error where there is one." },
  FORBIDDEN: { code: -32001, meaning: "Forbidden by policy: the method is disabled in the config, or the command or path is outside the allowlist." },
  NOT_FOUND: { code: -32002, meaning: "The object the request names (file, handle, process) does not exist." },
  TIMEOUT: { code: -32003, meaning: "The operation did not finish within its time limit." },
  TOO_LARGE: { code: -32004, meaning: "A frame, payload or output is above a configured limit; data.limit gives the limit." },
  UNSUPPORTED_OS: { code: -32005, meaning: "The method exists but is not implemented on this guest operating system." },
  FROZEN: { code: -32006, meaning: "Filesystems are frozen (fsfreeze_freeze): only calls that cannot write to disk are served until fsfreeze_thaw." },
  UNSUPPORTED: { code: -32007, meaning: "The guest has no way to do what was asked (e.g. a suspend mode that neither systemd, pm-utils nor its kernel offers); asking again will not help." },
  UNAUTHENTICATED: {
    code: -32008,
    meaning: "The agent requires signed requests ([security] hmac_key_file) and this one is unsigned, wrongly signed, outside the time window or replayed; data.reason says which.",
  },
  STOPPING: { code: -32009, meaning: "The agent is stopping (SIGTERM): calls already running finish, new ones are refused; retry once it is back." },
} as const;

export type ErrorName = keyof typeof JSONRPC_ERRORS | keyof typeof APPLICATION_ERRORS;

const ALL_ERRORS: Record<ErrorName, { code: number; meaning: string }> = { ...JSONRPC_ERRORS, ...APPLICATION_ERRORS };

export function errorCode(name: ErrorName): number {
  return ALL_ERRORS[name].code;
}

/** An error a handler throws to answer with a specific JSON-RPC error. */
export class RpcError extends Error {
  readonly code: number;
  readonly data: unknown;

  constructor(name: ErrorName, message: string, data?: unknown) {
    super(message);
    this.name = "RpcError";
    this.code = errorCode(name);
    this.data = data;
  }
}
