/** Message authentication: the scheme, checked piece by piece with a fake clock. */
import { describe, expect, test } from "bun:test";
import { chmodSync, chownSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../src/config/load.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { canonicalJson, loadHmacKey, RequestAuthenticator, signRequest } from "../src/security/hmac.ts";
import { makeTempDir } from "./helpers/agent-process.ts";

const KEY = Buffer.from("0123456789abcdef0123456789abcdef");
const T0 = 1_800_000_000_000;

function refusal(run: () => void): { reason: string; message: string } {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(RpcError);
    expect((error as RpcError).code).toBe(-32008);
    return { reason: ((error as RpcError).data as { reason: string }).reason, message: (error as Error).message };
  }
  throw new Error("expected a refusal");
}

describe("canonical JSON", () => {
  test("sorts keys at every depth and drops whitespace, so re-encoded requests sign the same", () => {
    expect(canonicalJson({ b: 1, a: [{ d: "x", c: null }, 2.5], é: true })).toBe('{"a":[{"c":null,"d":"x"},2.5],"b":1,"é":true}');
    expect(canonicalJson(JSON.parse('{ "params" : { "z" : 1 , "y" : [ ] } , "id" : 7 }'))).toBe('{"id":7,"params":{"y":[],"z":1}}');
  });
});

describe("RequestAuthenticator", () => {
  let now = T0;
  const auth = () => new RequestAuthenticator(KEY, 120_000, () => now);
  const request = { jsonrpc: "2.0", id: 1, method: "ping", params: { payload: [1, "two"] } };

  test("a signed request passes, and passes again re-encoded with its keys in another order", () => {
    now = T0;
    const signed = signRequest(KEY, request, T0);
    auth().verify(signed);
    const reordered = JSON.parse(JSON.stringify({ auth: signed.auth, params: request.params, method: "ping", id: 1, jsonrpc: "2.0" }));
    auth().verify(reordered);
  });

  test("unsigned, malformed, wrongly signed, altered, stale and replayed requests are refused, each with its reason", () => {
    now = T0;
    const verifier = auth();
    expect(refusal(() => verifier.verify(request)).reason).toBe("missing");
    expect(refusal(() => verifier.verify({ ...request, auth: "x" })).reason).toBe("malformed");
    const signed = signRequest(KEY, request, T0);
    const signedAuth = signed.auth as Record<string, unknown>;
    expect(refusal(() => verifier.verify({ ...signed, auth: { ...signedAuth, nonce: "short" } })).reason).toBe("malformed");
    expect(refusal(() => verifier.verify({ ...signed, auth: { ...signedAuth, mac: "AB".repeat(32) } })).reason).toBe("malformed");
    expect(refusal(() => verifier.verify(signRequest(Buffer.from("another key of sixteen+ bytes"), request, T0))).reason).toBe("bad_mac");
    expect(refusal(() => verifier.verify({ ...signed, params: { payload: [1, "three"] } })).reason).toBe("bad_mac");
    expect(refusal(() => verifier.verify({ ...signed, method: "get_info" })).reason).toBe("bad_mac");
    const stale = refusal(() => verifier.verify(signRequest(KEY, request, T0 - 121_000)));
    expect(stale).toEqual({ reason: "stale", message: "Unauthenticated: 'auth.ts' is 121 s away from the agent's clock; the window is 120 s" });
    expect(refusal(() => verifier.verify(signRequest(KEY, request, T0 + 121_000))).reason).toBe("stale");
    verifier.verify(signed);
    expect(refusal(() => verifier.verify(signed))).toEqual({ reason: "replayed", message: "Unauthenticated: this nonce was already used" });
  });

  test("a nonce is remembered as long as its timestamp can pass, then forgotten (the request is stale by then)", () => {
    now = T0;
    const verifier = auth();
    const signed = signRequest(KEY, request, T0);
    verifier.verify(signed);
    now = T0 + 120_000;
    expect(refusal(() => verifier.verify(signed)).reason).toBe("replayed");
    now = T0 + 120_001;
    verifier.verify(signRequest(KEY, request, now)); // sweeps the first nonce out
    expect(refusal(() => verifier.verify(signed)).reason).toBe("stale");
  });
});

describe("the key file", () => {
  const dir = makeTempDir("kma-hmac-");
  const keyFile = (name: string, content: string | Buffer, mode = 0o600) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    chmodSync(path, mode);
    return path;
  };
  const configError = (run: () => unknown) => {
    try {
      run();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return (error as Error).message;
    }
    throw new Error("expected a ConfigError");
  };

  test("root's, mode 0600, at least 16 bytes; a trailing newline is not part of the key", () => {
    expect(loadHmacKey(keyFile("good", `${KEY}\n`))).toEqual(KEY);
  });

  test("anything else stops the agent, saying why", () => {
    const open = keyFile("open", KEY, 0o644);
    expect(configError(() => loadHmacKey(open))).toBe(`hmac_key_file ${open} must have mode 0600, not 0644`);
    const foreign = keyFile("foreign", KEY);
    chownSync(foreign, 65534, 65534);
    expect(configError(() => loadHmacKey(foreign))).toBe(`hmac_key_file ${foreign} must be owned by root (uid 0), not uid 65534`);
    const short = keyFile("short", "tiny\n");
    expect(configError(() => loadHmacKey(short))).toBe(`hmac_key_file ${short} holds 4 bytes; a key needs at least 16`);
    expect(configError(() => loadHmacKey(join(dir, "missing")))).toContain(`hmac_key_file ${join(dir, "missing")}: ENOENT`);
    expect(configError(() => loadHmacKey(dir))).toBe(`hmac_key_file ${dir} is not a regular file`);
  });
});
