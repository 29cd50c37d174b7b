/** JSON-RPC 2.0 envelopes as they go on the wire. */
export type RequestId = string | number | null;

export interface RpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

export type Response =
  | { jsonrpc: "2.0"; id: RequestId; result: unknown }
  | { jsonrpc: "2.0"; id: RequestId; error: RpcErrorObject };

export function errorResponse(id: RequestId, code: number, message: string, data?: unknown): Response {
  const error: RpcErrorObject = data === undefined ? { code, message } : { code, message, data };
  return { jsonrpc: "2.0", id, error };
}

export function isValidId(id: unknown): id is RequestId {
  return id === null || typeof id === "string" || (typeof id === "number" && Number.isFinite(id));
}
