/**
 * guest-file-open/read/write/seek/flush/close: qemu-ga's handle API, under
 * the agent's file policy — paths confined to allowed_file_paths (symlinks
 * resolved, no symlink followed at the last component by a mode that
 * creates), regular files with one link only (a FIFO or device is refused,
 * never waited on; see refuseHardlinked). Handles count up from 1000
 * and the counter is kept in the state dir, so a handle is never reused, not
 * even across restarts — as qemu-ga does (its qga.state, same format).
 */
import { closeSync, constants, fstatSync, ftruncateSync, mkdirSync, readFileSync, readSync, renameSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { errnoOf } from "../files/fsx.ts";
import { refuseHardlinked, type PathPolicy } from "../files/paths.ts";
import type { WindowsPathPolicy } from "../files/windows.ts";
import { Base64Bytes } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import { BufferPool } from "../runtime/buffer-pool.ts";
import { decodeQemuBase64 } from "./base64.ts";
import { STRERROR, strerror } from "../guest/errors.ts";
import { genericError } from "./errors.ts";

const FIRST_HANDLE = 1000;
/** qemu-ga's default and ceiling for guest-file-read. */
export const DEFAULT_READ_COUNT = 4096;
export const MAX_READ_COUNT = 48 * 1024 * 1024;
/** Read buffers up to this size are kept for the next read (hosts read 4 MiB at a time); larger ones are not. */
const KEPT_READ_BYTES = 4 * 1024 * 1024;

interface OpenFile {
  fd: number;
  position: number;
  append: boolean;
  /** As a stdio stream's EOF flag: set by a short read, cleared by a seek. */
  eof: boolean;
}

const MODES: Record<string, { flags: number; create: boolean; append: boolean }> = (() => {
  const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND } = constants;
  const table: Record<string, { flags: number; create: boolean; append: boolean }> = {};
  const define = (names: string[], flags: number, create: boolean, append: boolean) => {
    for (const name of names) table[name] = { flags, create, append };
  };
  define(["r", "rb"], O_RDONLY, false, false);
  define(["r+", "rb+", "r+b"], O_RDWR, false, false);
  define(["w", "wb"], O_WRONLY | O_CREAT | O_TRUNC, true, false);
  define(["w+", "wb+", "w+b"], O_RDWR | O_CREAT | O_TRUNC, true, false);
  define(["a", "ab"], O_WRONLY | O_CREAT | O_APPEND, true, true);
  define(["a+", "ab+", "a+b"], O_RDWR | O_CREAT | O_APPEND, true, true);
  return table;
})();

/** A policy refusal keeps its own words; an OS error (a missing parent, ...) reads as strerror, as qemu-ga's does. */
function reasonOf(error: unknown): string {
  if (!(error instanceof RpcError)) return strerror(error);
  const errno = (error.data as { errno?: string } | undefined)?.errno;
  return (errno && STRERROR[errno]) || error.message;
}

export class QgaFiles {
  private readonly files = new Map<number, OpenFile>();
  private readonly readBuffers = new BufferPool(1, KEPT_READ_BYTES);
  private readonly stateFile: string;
  private nextHandle: number;

  constructor(
    private readonly policy: Pick<PathPolicy | WindowsPathPolicy, "open">,
    private readonly stateDir: string,
    private readonly maxOpen: number,
  ) {
    this.stateFile = join(stateDir, "qga.state");
    let counter = FIRST_HANDLE;
    try {
      counter = Math.max(FIRST_HANDLE, Number(/^fd_counter=(\d+)$/m.exec(readFileSync(this.stateFile, "utf8"))?.[1] ?? FIRST_HANDLE));
    } catch {
      // No state yet: start at 1000.
    }
    this.nextHandle = counter;
  }

  async open(path: string, mode = "r"): Promise<number> {
    const spec = MODES[mode];
    if (!spec) throw genericError(`invalid file open mode '${mode}'`);
    if (this.files.size >= this.maxOpen) throw genericError(`too many open files: [limits] qga_max_open_files is ${this.maxOpen}`);
    const failed = (reason: string) => genericError(`failed to open file '${path}' (mode: '${mode}'): ${reason}`);
    let fd: number;
    try {
      // Modes that create never follow a symlink at the last component; O_NONBLOCK: a FIFO cannot hang open().
      // O_TRUNC waits for the checks below, so a refused file is never truncated. (Windows has no O_NONBLOCK.)
      fd = (await this.policy.open(path, (spec.flags & ~constants.O_TRUNC) | (constants.O_NONBLOCK ?? 0), 0o600, !spec.create)).fd;
    } catch (error) {
      throw failed(reasonOf(error));
    }
    try {
      const stat = fstatSync(fd);
      if (!stat.isFile()) throw failed("not a regular file");
      refuseHardlinked(path, stat);
      if (spec.flags & constants.O_TRUNC) ftruncateSync(fd, 0);
    } catch (error) {
      closeSync(fd);
      if (error instanceof RpcError) throw failed(reasonOf(error));
      throw errnoOf(error) ? failed(strerror(error)) : error;
    }
    const handle = this.nextHandle++;
    this.persistCounter();
    this.files.set(handle, { fd, position: 0, append: spec.append, eof: false });
    return handle;
  }

  /** The bytes go out as Base64Bytes, encoded straight into the reply line (a 48 MiB read made a 64 MB string, then a 64 MB line). */
  read(handle: number, count = DEFAULT_READ_COUNT): { count: number; "buf-b64": Base64Bytes; eof: boolean } {
    const file = this.get(handle);
    if (count < 0 || count > MAX_READ_COUNT) throw genericError(`value '${count}' is invalid for argument count`);
    const buffer = this.readBuffers.take(count);
    let read: number;
    try {
      read = readSync(file.fd, buffer, 0, count, file.position);
    } catch (error) {
      this.readBuffers.giveBack(buffer);
      throw genericError(`failed to read file: ${strerror(error)}`);
    }
    file.position += read;
    file.eof = read < count;
    return { count: read, "buf-b64": new Base64Bytes(buffer.subarray(0, read), () => this.readBuffers.giveBack(buffer)), eof: file.eof };
  }

  write(handle: number, base64: string, count?: number): { count: number; eof: boolean } {
    const file = this.get(handle);
    const bytes = decodeQemuBase64(base64);
    const length = count ?? bytes.length;
    if (length < 0 || length > bytes.length) throw genericError(`value '${length}' is invalid for argument count`);
    let written: number;
    try {
      // O_APPEND makes the kernel write at the end whatever position is given.
      written = writeSync(file.fd, bytes, 0, length, file.append ? null : file.position);
    } catch (error) {
      throw genericError(`failed to write to file: ${strerror(error)}`);
    }
    file.position = file.append ? fstatSync(file.fd).size : file.position + written;
    return { count: written, eof: file.eof };
  }

  seek(handle: number, offset: number, whence: number | "set" | "cur" | "end"): { position: number; eof: boolean } {
    const file = this.get(handle);
    const base = whence === "set" || whence === 0 ? 0 : whence === "cur" || whence === 1 ? file.position : whence === "end" || whence === 2 ? fstatSync(file.fd).size : NaN;
    if (Number.isNaN(base)) throw genericError(`invalid whence code ${whence}`);
    const position = base + offset;
    if (position < 0) throw genericError("failed to seek file: Invalid argument");
    file.position = position;
    file.eof = false;
    return { position, eof: false };
  }

  /** Writes go straight to the kernel (no userspace buffer to flush), as fflush would leave them. */
  flush(handle: number): Record<string, never> {
    this.get(handle);
    return {};
  }

  close(handle: number): Record<string, never> {
    const file = this.get(handle);
    this.files.delete(handle);
    closeSync(file.fd);
    return {};
  }

  /** The agent is stopping. */
  closeAll(): void {
    for (const file of this.files.values()) closeSync(file.fd);
    this.files.clear();
  }

  private get(handle: number): OpenFile {
    const file = this.files.get(handle);
    if (!file) throw genericError(`handle '${handle}' has not been found`);
    return file;
  }

  /** Written before the handle is handed out, atomically (temp + rename), in qemu-ga's format. */
  private persistCounter(): void {
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    const temp = `${this.stateFile}.tmp`;
    writeFileSync(temp, `[global]\nfd_counter=${this.nextHandle}\n`, { mode: 0o600 });
    renameSync(temp, this.stateFile);
  }
}
