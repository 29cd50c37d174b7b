/**
 * Structured logs on stderr, one line per event: journald (or the Windows
 * service wrapper) collects stderr, so no log files to rotate here.
 */
import { HeldLines } from "./held-lines.ts";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

const writeStderr = (line: string) => void process.stderr.write(line);

export function createLogger(level: LogLevel, format: "json" | "text", write: (line: string) => void = writeStderr): Logger {
  const threshold = LEVEL_RANK[level];
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (LEVEL_RANK[lvl] < threshold) return;
    write(logLine(format, lvl, msg, fields));
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

/**
 * The agent's logger, whose lines can be held in memory while filesystems are
 * frozen: stderr may be a file, or a pipe to a journald that is itself blocked.
 */
export function createHoldableLogger(level: LogLevel, format: "json" | "text", write: (line: string) => void = writeStderr): { logger: Logger; lines: HeldLines } {
  const lines = new HeldLines(write, (count) => logLine(format, "warn", "log lines dropped while filesystems were frozen", { count }));
  return { logger: createLogger(level, format, lines.write), lines };
}

function logLine(format: "json" | "text", level: LogLevel, msg: string, fields?: LogFields): string {
  const ts = new Date().toISOString();
  return format === "json" ? `${JSON.stringify({ ts, level, msg, ...fields })}\n` : `${ts} ${level} ${msg}${textFields(fields)}\n`;
}

function textFields(fields?: LogFields): string {
  if (!fields) return "";
  let out = "";
  for (const [key, value] of Object.entries(fields)) out += ` ${key}=${typeof value === "string" ? JSON.stringify(value) : String(value)}`;
  return out;
}

/** A logger that drops everything: for tests and the host CLI. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
