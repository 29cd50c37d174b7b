import type { Params, Result } from "../schema/methods.ts";

export function ping(params: Params<"ping">): Result<"ping"> {
  return params.payload === undefined ? { pong: true } : { pong: true, payload: params.payload };
}
