/**
 * Host verbs: `kvm-manager-agent call METHOD [JSON] --socket S` and one verb
 * per method (`kvm-manager-agent get_info --socket S`), generated from the
 * schema table so every new method is reachable from the shell.
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { AgentClient, AgentConnectionError, AgentTimeoutError, DEFAULT_TIMEOUT_MS } from "../client/client.ts";
import { isMethodName, METHOD_NAMES, METHODS, type MethodName } from "../schema/methods.ts";
import { readHmacKey } from "../security/hmac.ts";
import { UsageError } from "./agent-args.ts";
import { TRANSFER_USAGE } from "./transfer.ts";
import { renderHuman } from "./render.ts";

/** Accepts snake_case or kebab-case: get_info, get-info. */
export function hostMethod(verb: string): MethodName | undefined {
  const name = verb.replaceAll("-", "_");
  return isMethodName(name) ? name : undefined;
}

export const HOST_USAGE = `Host commands (talk to an agent through the VM's chardev unix socket):
  kvm-manager-agent call METHOD [PARAMS_JSON] --socket PATH [--json] [--timeout MS] [--wait MS]
  kvm-manager-agent METHOD [PARAMS_JSON] --socket PATH ...   (METHOD: ${METHOD_NAMES.join(", ")})
                  PARAMS_JSON "-" reads the params from stdin, keeping a password off the command line
  kvm-manager-agent methods                                  list methods and what they do
${TRANSFER_USAGE}

  --socket PATH   unix socket of the VM's port (QEMU -chardev socket,path=PATH) or of an agent on unix-listen,
                  or vsock:CID:PORT for an agent on vsock-listen
  --json          print the raw JSON result instead of the human rendering
  --timeout MS    per-call timeout (default ${DEFAULT_TIMEOUT_MS})
  --hmac-key-file PATH  sign every request with this key (for an agent with [security] hmac_key_file)
  --wait MS       first wait up to MS for the agent to answer (the VM may still be booting)

Exit status: 0 on success, 1 when the agent answered with an error, 2 on usage errors, 3 when the agent could not be reached.`;

export function listMethods(): string {
  const width = Math.max(...METHOD_NAMES.map((name) => name.length));
  return METHOD_NAMES.map((name) => `${name.padEnd(width)}  ${METHODS[name].summary}`).join("\n");
}

/** The flags every host verb takes to reach an agent. */
export const CONNECTION_OPTIONS = {
  socket: { type: "string", short: "s" },
  "hmac-key-file": { type: "string" },
  timeout: { type: "string" },
  wait: { type: "string" },
} as const;

/**
 * Connects as the connection flags say, waits for the agent when asked, runs
 * `use` and maps failures to exit codes: 1 when the agent answered with an
 * error (or a local file failed), 3 when the agent could not be reached.
 */
export async function withAgent(
  values: { socket?: string; timeout?: string; wait?: string; "hmac-key-file"?: string },
  fail: (message: string) => void,
  use: (client: AgentClient) => Promise<number>,
): Promise<number> {
  const socket = values.socket;
  if (!socket) throw new UsageError("--socket PATH is required");
  const timeoutMs = positiveInt(values.timeout, "--timeout") ?? DEFAULT_TIMEOUT_MS;
  const waitMs = positiveInt(values.wait, "--wait");
  const keyFile = values["hmac-key-file"];
  const hmacKey = keyFile === undefined ? undefined : readHmacKey(keyFile);
  let client: AgentClient;
  try {
    client = await AgentClient.connect(socket, { timeoutMs, hmacKey });
  } catch (error) {
    fail((error as Error).message);
    return 3;
  }
  try {
    if (waitMs !== undefined) await client.waitReady({ timeoutMs: waitMs });
    return await use(client);
  } catch (error) {
    fail((error as Error).message);
    return error instanceof AgentTimeoutError || error instanceof AgentConnectionError ? 3 : 1;
  } finally {
    client.close();
  }
}

/** parseArgs for a host verb (flags plus positionals); a bad flag is a usage error. */
export function parseVerbArgs<const O extends ParseArgsOptionsConfig>(argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: true, options });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** Runs a host verb; returns the process exit code. */
export async function runHostCommand(
  verb: string,
  argv: string[],
  out = console.log,
  err = console.error,
  stdin: () => Promise<string> = () => Bun.stdin.text(),
): Promise<number> {
  const parsed = parseVerbArgs(argv, { ...CONNECTION_OPTIONS, json: { type: "boolean" } });
  const positionals = [...parsed.positionals];
  const methodArg = verb === "call" ? positionals.shift() : verb;
  if (methodArg === undefined) throw new UsageError("call needs a METHOD");
  const method = hostMethod(methodArg);
  if (!method) throw new UsageError(`unknown method '${methodArg}'; known: ${METHOD_NAMES.join(", ")}`);
  if (positionals.length > 1) throw new UsageError(`unexpected arguments: ${positionals.slice(1).join(" ")}`);
  let params: object = {};
  if (positionals[0] !== undefined) {
    // Arguments are visible to every user of the host (ps, /proc/PID/cmdline); stdin is not.
    const text = positionals[0] === "-" ? await stdin() : positionals[0];
    try {
      params = JSON.parse(text);
    } catch (error) {
      throw new UsageError(`PARAMS_JSON is not valid JSON: ${(error as Error).message}`);
    }
    if (typeof params !== "object" || params === null || Array.isArray(params)) throw new UsageError("PARAMS_JSON must be a JSON object");
  }
  return withAgent(parsed.values, (message) => err(`kvm-manager-agent: ${message}`), async (client) => {
    const result = await client.call(method, params as never);
    out(parsed.values.json ? JSON.stringify(result) : renderHuman(result));
    return 0;
  });
}

function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer of milliseconds (got '${value}')`);
  return n;
}
