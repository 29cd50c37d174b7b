/**
 * Optional message authentication of native requests ([security]
 * hmac_key_file). Each request carries
 *   "auth": { "ts": <ms since the epoch>, "nonce": "<16-64 chars [A-Za-z0-9_-]>", "mac": "<64 hex>" }
 * where mac = HMAC-SHA256(key, "kma-hmac-v1\n" + ts + "\n" + nonce + "\n" + canonical(request without "auth")),
 * canonical being the JSON text with object keys sorted by UTF-16 code units
 * and no whitespace (JSON.stringify's numbers and strings: RFC 8785's form).
 *
 * A request is refused when it is unsigned, its mac is wrong (compared in
 * constant time), its ts is outside the window either way, or its nonce was
 * already used within the window.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { ConfigError } from "../config/load.ts";
import { RpcError } from "../protocol/errors.ts";

const MAC_PREFIX = "kma-hmac-v1";
const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const MAC_HEX = /^[0-9a-f]{64}$/;
const MIN_KEY_BYTES = 16;
/** Nonces remembered at once: past this, signed requests are refused until old ones leave the window. */
export const MAX_REMEMBERED_NONCES = 1_000_000;

/**
 * The key: the file's bytes without a trailing newline. It must be root's and
 * readable by root only, or anyone who can read it can drive the agent.
 */
export function loadHmacKey(path: string): Buffer {
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    throw new ConfigError(`hmac_key_file ${path}: ${(error as Error).message}`);
  }
  if (!stat.isFile()) throw new ConfigError(`hmac_key_file ${path} is not a regular file`);
  if (stat.uid !== 0) throw new ConfigError(`hmac_key_file ${path} must be owned by root (uid 0), not uid ${stat.uid}`);
  if ((stat.mode & 0o777) !== 0o600) throw new ConfigError(`hmac_key_file ${path} must have mode 0600, not ${(stat.mode & 0o777).toString(8).padStart(4, "0")}`);
  return readHmacKey(path);
}

/** The key bytes of a key file, without the ownership checks: what the host client reads. */
export function readHmacKey(path: string): Buffer {
  let key: Buffer;
  try {
    key = readFileSync(path);
  } catch (error) {
    throw new ConfigError(`hmac_key_file ${path}: ${(error as Error).message}`);
  }
  const trimmed = key.at(-1) === 0x0a ? key.subarray(0, key.at(-2) === 0x0d ? -2 : -1) : key;
  if (trimmed.length < MIN_KEY_BYTES) throw new ConfigError(`hmac_key_file ${path} holds ${trimmed.length} bytes; a key needs at least ${MIN_KEY_BYTES}`);
  return Buffer.from(trimmed);
}

/** JSON with sorted keys and no whitespace: the same text on both sides for the same request. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => (item === undefined ? "null" : canonicalJson(item))).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    const members = keys.filter((key) => (value as Record<string, unknown>)[key] !== undefined);
    return `{${members.map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

function mac(key: Uint8Array, ts: number, nonce: string, request: Record<string, unknown>): Buffer {
  const { auth: _auth, ...unsigned } = request;
  return createHmac("sha256", key).update(`${MAC_PREFIX}\n${ts}\n${nonce}\n${canonicalJson(unsigned)}`).digest();
}

/** What the host client adds to a request before sending it. */
export function signRequest(key: Uint8Array, request: Record<string, unknown>, now = Date.now()): Record<string, unknown> {
  const nonce = randomBytes(18).toString("base64url");
  return { ...request, auth: { ts: now, nonce, mac: mac(key, now, nonce, request).toString("hex") } };
}

const refuse = (reason: string, message: string) => new RpcError("UNAUTHENTICATED", `Unauthenticated: ${message}`, { reason });

export class RequestAuthenticator {
  /** nonce → the time (ms) after which it may be forgotten. */
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly key: Uint8Array,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Throws UNAUTHENTICATED unless `request` carries a valid, fresh, unused signature. */
  verify(request: Record<string, unknown>): void {
    const auth = request.auth;
    if (auth === undefined) throw refuse("missing", "this agent requires signed requests ('auth' member; see [security] hmac_key_file)");
    if (typeof auth !== "object" || auth === null || Array.isArray(auth)) throw refuse("malformed", "'auth' must be an object with ts, nonce and mac");
    const { ts, nonce, mac: given } = auth as Record<string, unknown>;
    if (typeof ts !== "number" || !Number.isSafeInteger(ts)) throw refuse("malformed", "'auth.ts' must be an integer (ms since the epoch)");
    if (typeof nonce !== "string" || !NONCE.test(nonce)) throw refuse("malformed", "'auth.nonce' must be 16 to 64 characters of [A-Za-z0-9_-]");
    if (typeof given !== "string" || !MAC_HEX.test(given)) throw refuse("malformed", "'auth.mac' must be 64 lowercase hex digits");
    const now = this.now();
    if (Math.abs(now - ts) > this.windowMs) {
      throw refuse("stale", `'auth.ts' is ${Math.round((now - ts) / 1000)} s away from the agent's clock; the window is ${this.windowMs / 1000} s`);
    }
    if (!timingSafeEqual(mac(this.key, ts, nonce, request), Buffer.from(given, "hex"))) throw refuse("bad_mac", "the mac does not match the request");
    this.forgetExpired(now);
    if (this.seen.has(nonce)) throw refuse("replayed", "this nonce was already used");
    if (this.seen.size >= MAX_REMEMBERED_NONCES) throw refuse("busy", `more than ${MAX_REMEMBERED_NONCES} signed requests within the window`);
    // Kept until the ts it came with can no longer pass the window check.
    this.seen.set(nonce, ts + this.windowMs);
  }

  /** Map order is insertion order, and expiries mostly grow with it: stop at the first still in force. */
  private forgetExpired(now: number): void {
    for (const [nonce, expires] of this.seen) {
      if (expires >= now) break;
      this.seen.delete(nonce);
    }
  }
}
