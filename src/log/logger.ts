/**
 * Structured logs on stderr, one line per event: journald (or the Windows
 * service wrapper) collects stderr, so no log files to rotate here.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

export function createLogger(
  level: LogLevel,
  format: "json" | "text",
  write: (line: string) => void = (line) => process.stderr.write(line),
): Logger {
  const threshold = LEVEL_RANK[level];
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (LEVEL_RANK[lvl] < threshold) return;
    const ts = new Date().toISOString();
    write(format === "json" ? `${JSON.stringify({ ts, level: lvl, msg, ...fields })}\n` : `${ts} ${lvl} ${msg}${textFields(fields)}\n`);
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

function textFields(fields?: LogFields): string {
  if (!fields) return "";
  let out = "";
  for (const [key, value] of Object.entries(fields)) out += ` ${key}=${typeof value === "string" ? JSON.stringify(value) : String(value)}`;
  return out;
}

/** A logger that drops everything: for tests and the host CLI. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
