import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import { configSchema, servesSomething, type AgentConfig } from "./schema.ts";

/** Start-up stops with this; the message names the file and the key. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Load and validate a config file. A missing file at the default location
 * means defaults; a missing file the user named explicitly is an error.
 */
export async function loadConfig(path: string, { required }: { required: boolean }): Promise<AgentConfig> {
  const file = Bun.file(path);
  if (!(await file.exists())) {
    if (required) throw new ConfigError(`config file ${path} does not exist`);
    return configSchema.parse({});
  }
  let text: string;
  try {
    text = await file.text();
  } catch (error) {
    throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`);
  }
  return parseConfigText(text, path);
}

export function parseConfigText(text: string, path: string): AgentConfig {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (error) {
    const detail = error instanceof TomlError ? `line ${error.line}, column ${error.column}: ${firstLine(error.message)}` : String(error);
    throw new ConfigError(`${path}: invalid TOML at ${detail}`);
  }
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(`${path}: ${describeConfigIssues(parsed.error)}`);
  if (!servesSomething(parsed.data)) throw new ConfigError(`${path}: [transport] enabled and [qga] enabled are both false: the agent would serve nothing`);
  return parsed.data;
}

function firstLine(message: string): string {
  return message.split("\n")[0] ?? message;
}

/** "[security] allowed_commands: expected array, received string" */
function describeConfigIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map(String);
      if (issue.code === "unrecognized_keys") {
        return issue.keys.map((key) => `${keyName([...path, key])}: unknown key`).join("; ");
      }
      return `${keyName(path)}: ${issue.message.replace(/^Invalid input: /, "")}`;
    })
    .join("; ");
}

function keyName(path: string[]): string {
  if (path.length === 0) return "(top level)";
  if (path.length === 1) return path[0]!;
  const [section, ...rest] = path;
  return `[${section}] ${rest.join(".")}`;
}
