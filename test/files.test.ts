/**
 * FileManager in-process: the path policy (every refusal), the limits, the
 * atomicity of writes and uploads, and archive unpacking.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type AgentConfig } from "../src/config/schema.ts";
import { hasOpenat2 } from "../src/files/at.ts";
import { FileManager, maxChunkBytes } from "../src/files/file-service.ts";
import { startFlipRacer } from "./helpers/flip-racer.ts";
import { silentLogger } from "../src/log/logger.ts";
import { errorCode, RpcError, type ErrorName } from "../src/protocol/errors.ts";
import { METHODS } from "../src/schema/methods.ts";

const sha = (bytes: Uint8Array | string) => createHash("sha256").update(bytes).digest("hex");
const b64 = (bytes: Uint8Array | string) => Buffer.from(bytes).toString("base64");
/** A result as the host receives it (copy_from_guest's content becomes its base64 string). */
const wire = (result: object) => JSON.parse(JSON.stringify(result));

let base: string; // Holds the root, a sibling "rootx", an "outside" dir and the private TMPDIR.
let root: string;
let outside: string;
let stageTmp: string;
let savedTmpdir: string | undefined;
let managers: FileManager[] = [];
const realTmp = tmpdir();

beforeAll(() => {
  savedTmpdir = process.env.TMPDIR;
});
afterAll(() => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
});

beforeEach(() => {
  base = mkdtempSync(join(realTmp, "kma-files-"));
  root = join(base, "root");
  outside = join(base, "outside");
  stageTmp = join(base, "stage-tmp");
  for (const dir of [root, outside, stageTmp, join(base, "rootx")]) mkdirSync(dir);
  // Archive uploads are staged under os.tmpdir(): point it at a dir we can inspect.
  process.env.TMPDIR = stageTmp;
});

afterEach(async () => {
  for (const manager of managers) await manager.close();
  managers = [];
  rmSync(base, { recursive: true, force: true });
});

/** How the managers made next confine opens: the path policy tests run with both. */
let resolver: "openat2" | "realpath" = "openat2";

function manager(limits: Partial<AgentConfig["limits"]> = {}): FileManager {
  const config = defaultConfig();
  config.security.allowed_file_paths = [root];
  config.limits = { ...config.limits, ...limits };
  const files = new FileManager(config, silentLogger, { openat2: resolver === "openat2" });
  if (hasOpenat2()) expect(files.policy.resolver).toBe(resolver); // Both ways really tested where the kernel can.
  managers.push(files);
  return files;
}

/** Parse through the method schemas, as the dispatcher does (defaults applied). */
function p<M extends keyof typeof METHODS>(method: M, params: object): any {
  return METHODS[method].params.parse(params);
}

async function rejects(work: Promise<unknown> | (() => unknown), name: ErrorName): Promise<RpcError> {
  try {
    await (typeof work === "function" ? work() : work);
  } catch (error) {
    if (!(error instanceof RpcError)) throw error;
    expect({ code: error.code, message: error.message }).toMatchObject({ code: errorCode(name) });
    return error;
  }
  throw new Error(`expected ${name}, but the call succeeded`);
}

/** Every temp or staging leftover under `dir` (recursive) and in the private TMPDIR. */
function leftovers(dir = root): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      if (entry.name.includes(".kma-")) found.push(join(d, entry.name));
      if (entry.isDirectory()) walk(join(d, entry.name));
    }
  };
  walk(dir);
  return [...found, ...readdirSync(stageTmp).map((name) => join(stageTmp, name))];
}

async function spawnOk(cmd: string[], cwd?: string): Promise<void> {
  const proc = Bun.spawn(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  const code = await proc.exited;
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}: ${await new Response(proc.stderr).text()}`);
}

// ================================================================ path policy

for (const mode of ["openat2", "realpath"] as const)
describe(`path policy (${mode})`, () => {
  beforeEach(() => {
    resolver = mode;
  });
  afterEach(() => {
    resolver = "openat2";
  });

  test("a relative path is refused", async () => {
    const files = manager();
    const error = await rejects(files.copyTo(p("copy_to_guest", { path: "tmp/x", content_base64: b64("x") })), "FORBIDDEN");
    expect(error.data).toMatchObject({ reason: "relative" });
    await rejects(files.copyFrom(p("copy_from_guest", { path: "x" })), "FORBIDDEN");
  });

  test("'..' components are refused, even when they would land inside the root", async () => {
    const files = manager();
    mkdirSync(join(root, "a"));
    writeFileSync(join(root, "b"), "b");
    const error = await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/a/../c`, content_base64: b64("x") })), "FORBIDDEN");
    expect(error.data).toMatchObject({ reason: "dot_dot" });
    await rejects(files.copyFrom(p("copy_from_guest", { path: `${root}/a/../b` })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/../outside/x`, content_base64: b64("x") })), "FORBIDDEN");
    expect(existsSync(join(root, "c"))).toBe(false);
    expect(existsSync(join(outside, "x"))).toBe(false);
  });

  test("a NUL byte is refused", async () => {
    const files = manager();
    const error = await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/a\0b`, content_base64: b64("x") })), "FORBIDDEN");
    expect(error.data).toMatchObject({ reason: "nul_byte" });
  });

  test("paths outside allowed_file_paths are refused, existing or not", async () => {
    const files = manager();
    await rejects(files.copyFrom(p("copy_from_guest", { path: "/etc/hostname" })), "FORBIDDEN");
    await rejects(files.copyFrom(p("copy_from_guest", { path: "/etc/does-not-exist/x" })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: join(outside, "x"), content_base64: b64("x") })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: join(outside, "new/deeper/x"), content_base64: b64("x"), create_dirs: true })), "FORBIDDEN");
    expect(readdirSync(outside)).toEqual([]);
    // The root itself is not a file to write.
    await rejects(files.copyTo(p("copy_to_guest", { path: root, content_base64: b64("x") })), "FORBIDDEN");
  });

  test("the prefix check is on components: <root>x is not under <root>", async () => {
    const files = manager();
    writeFileSync(join(base, "rootx", "secret"), "s");
    await rejects(files.copyTo(p("copy_to_guest", { path: `${root}x/f`, content_base64: b64("x") })), "FORBIDDEN");
    await rejects(files.copyFrom(p("copy_from_guest", { path: `${root}x/secret` })), "FORBIDDEN");
    expect(readdirSync(join(base, "rootx"))).toEqual(["secret"]);
  });

  test("a symlink in a parent directory that escapes the root is refused (read, write, create_dirs, upload)", async () => {
    const files = manager();
    writeFileSync(join(outside, "secret"), "s");
    symlinkSync(outside, join(root, "escape"));
    await rejects(files.copyFrom(p("copy_from_guest", { path: `${root}/escape/secret` })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/escape/new`, content_base64: b64("x") })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/escape/d/e/new`, content_base64: b64("x"), create_dirs: true })), "FORBIDDEN");
    await rejects(files.uploadStart(p("upload_start", { path: `${root}/escape/big` })), "FORBIDDEN");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: `${root}/escape/tree`, archive_base64: b64(Bun.gzipSync(new Uint8Array(1024))) })), "FORBIDDEN");
    expect(readdirSync(outside)).toEqual(["secret"]);
  });

  test("a symlink in a parent that stays inside the root is followed", async () => {
    const files = manager();
    mkdirSync(join(root, "real"));
    symlinkSync(join(root, "real"), join(root, "alias"));
    const result = await files.copyTo(p("copy_to_guest", { path: `${root}/alias/f`, content_base64: b64("hi") }));
    expect(result.path).toBe(join(root, "real", "f"));
    expect(readFileSync(join(root, "real", "f"), "utf8")).toBe("hi");
  });

  test("writes never follow a symlink at the final component", async () => {
    const files = manager();
    writeFileSync(join(root, "target"), "old");
    writeFileSync(join(outside, "target"), "outside");
    symlinkSync(join(root, "target"), join(root, "inside-link"));
    symlinkSync(join(outside, "target"), join(root, "outside-link"));
    for (const link of ["inside-link", "outside-link"]) {
      const error = await rejects(files.copyTo(p("copy_to_guest", { path: join(root, link), content_base64: b64("new") })), "FORBIDDEN");
      expect(error.data).toMatchObject({ reason: "symlink" });
      await rejects(files.uploadStart(p("upload_start", { path: join(root, link) })), "FORBIDDEN");
      expect(lstatSync(join(root, link)).isSymbolicLink()).toBe(true);
    }
    expect(readFileSync(join(root, "target"), "utf8")).toBe("old");
    expect(readFileSync(join(outside, "target"), "utf8")).toBe("outside");
    expect(leftovers()).toEqual([]);
  });

  test("reads follow a final symlink only when its target is under the root", async () => {
    const files = manager();
    writeFileSync(join(root, "target"), "inside");
    writeFileSync(join(outside, "target"), "outside");
    symlinkSync(join(root, "target"), join(root, "inside-link"));
    symlinkSync(join(outside, "target"), join(root, "outside-link"));
    const ok = wire(await files.copyFrom(p("copy_from_guest", { path: join(root, "inside-link") })));
    expect(Buffer.from(ok.content_base64, "base64").toString()).toBe("inside");
    await rejects(files.copyFrom(p("copy_from_guest", { path: join(root, "outside-link") })), "FORBIDDEN");
  });

  test("a FIFO is refused at once for reading and writing, never a hang", async () => {
    const files = manager();
    const fifo = join(root, "fifo");
    await spawnOk(["mkfifo", fifo]);
    const started = performance.now();
    const read = await rejects(files.copyFrom(p("copy_from_guest", { path: fifo })), "FORBIDDEN");
    expect(read.data).toMatchObject({ reason: "not_regular_file", type: "FIFO" });
    await rejects(files.copyTo(p("copy_to_guest", { path: fifo, content_base64: b64("x") })), "FORBIDDEN");
    await rejects(files.uploadStart(p("upload_start", { path: fifo })), "FORBIDDEN");
    expect(performance.now() - started).toBeLessThan(10_000); // Would hang forever if opened blocking.
    expect(statSync(fifo).isFIFO()).toBe(true);
    expect(leftovers()).toEqual([]);
  });

  test("a device node is refused for reading and writing", async () => {
    if (process.getuid?.() !== 0) return; // mknod needs root; the agent runs as root.
    const files = manager();
    const device = join(root, "null");
    await spawnOk(["mknod", device, "c", "1", "3"]);
    const read = await rejects(files.copyFrom(p("copy_from_guest", { path: device })), "FORBIDDEN");
    expect(read.data).toMatchObject({ type: "character device" });
    await rejects(files.copyTo(p("copy_to_guest", { path: device, content_base64: b64("x") })), "FORBIDDEN");
    expect(statSync(device).isCharacterDevice()).toBe(true);
  });

  test("a directory is not a file", async () => {
    const files = manager();
    mkdirSync(join(root, "dir"));
    await rejects(files.copyFrom(p("copy_from_guest", { path: join(root, "dir") })), "FORBIDDEN");
    await rejects(files.copyTo(p("copy_to_guest", { path: join(root, "dir"), content_base64: b64("x") })), "FORBIDDEN");
  });

  test("missing parents are NOT_FOUND unless create_dirs, which makes them 0755 under the root", async () => {
    const files = manager();
    await rejects(files.copyTo(p("copy_to_guest", { path: `${root}/a/b/f`, content_base64: b64("x") })), "NOT_FOUND");
    await rejects(files.uploadStart(p("upload_start", { path: `${root}/a/b/f` })), "NOT_FOUND");
    await rejects(files.copyFrom(p("copy_from_guest", { path: `${root}/a/b/f` })), "NOT_FOUND");
    await rejects(files.copyFrom(p("copy_from_guest", { path: `${root}/missing` })), "NOT_FOUND");
    expect(existsSync(join(root, "a"))).toBe(false);
    const old = process.umask(0o077);
    try {
      await files.copyTo(p("copy_to_guest", { path: `${root}/a/b/f`, content_base64: b64("x"), create_dirs: true }));
    } finally {
      process.umask(old);
    }
    expect(statSync(join(root, "a")).mode & 0o777).toBe(0o755);
    expect(statSync(join(root, "a", "b")).mode & 0o777).toBe(0o755);
    expect(readFileSync(join(root, "a", "b", "f"), "utf8")).toBe("x");
  });

  test("overwrite: false refuses an existing file and keeps it", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old");
    const error = await rejects(files.copyTo(p("copy_to_guest", { path: join(root, "f"), content_base64: b64("new"), overwrite: false })), "FORBIDDEN");
    expect(error.data).toMatchObject({ reason: "exists" });
    await rejects(files.uploadStart(p("upload_start", { path: join(root, "f"), overwrite: false })), "FORBIDDEN");
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    await files.copyTo(p("copy_to_guest", { path: join(root, "g"), content_base64: b64("new"), overwrite: false }));
    expect(readFileSync(join(root, "g"), "utf8")).toBe("new");
    expect(leftovers()).toEqual([]);
  });

  test("a parent swapped for a symlink to the outside during an upload: the commit lands in the directory opened at start", async () => {
    const files = manager();
    mkdirSync(join(root, "d"));
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "d", "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("data") }));
    renameSync(join(root, "d"), join(root, "moved"));
    symlinkSync(outside, join(root, "d"));
    await files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("data") }));
    expect(readFileSync(join(root, "moved", "f"), "utf8")).toBe("data");
    expect(readdirSync(outside)).toEqual([]);
    expect(leftovers()).toEqual([]);
  });

  test("a racer flipping a parent between a real dir and a symlink out: reads, writes and create_dirs never touch the outside", async () => {
    const files = manager();
    // "race" is always there: a real directory or a symlink to the outside, exchanged atomically. It is
    // never the last component: O_NOFOLLOW alone would stop that.
    mkdirSync(join(root, "race", "sub"), { recursive: true });
    writeFileSync(join(root, "race", "sub", "f"), "inside");
    mkdirSync(join(outside, "sub"));
    writeFileSync(join(outside, "sub", "f"), "outside");
    symlinkSync(outside, join(root, "link"));
    const racer = startFlipRacer(root, [["race", "link"]]);
    const contents = new Set<string>();
    try {
      const until = Date.now() + 1_500;
      for (let round = 0; Date.now() < until; round++) {
        const attempts = await Promise.allSettled([
          ...Array.from({ length: 16 }, () =>
            files.copyFrom(p("copy_from_guest", { path: `${root}/race/sub/f` })).then((r) => contents.add(Buffer.from(wire(r).content_base64, "base64").toString())),
          ),
          files.copyTo(p("copy_to_guest", { path: `${root}/race/sub/w-${round}`, content_base64: b64("x") })),
          files.copyTo(p("copy_to_guest", { path: `${root}/race/sub/d-${round}/e/f`, content_base64: b64("x"), create_dirs: true })),
        ]);
        for (const attempt of attempts) if (attempt.status === "rejected" && !(attempt.reason instanceof RpcError)) throw attempt.reason;
      }
    } finally {
      racer.kill("SIGKILL");
      await racer.exited;
    }
    expect([...contents].filter((content) => content !== "inside")).toEqual([]);
    expect(readdirSync(outside, { recursive: true }).sort()).toEqual(["sub", join("sub", "f")]);
    expect(readFileSync(join(outside, "sub", "f"), "utf8")).toBe("outside");
    expect(leftovers()).toEqual([]);
  }, 30_000);

  test("hardlinks: a file with more than one link is never read; an atomic write replaces the name, not the linked file", async () => {
    const files = manager();
    writeFileSync(join(outside, "secret"), "secret");
    linkSync(join(outside, "secret"), join(root, "link"));
    const error = await rejects(files.copyFrom(p("copy_from_guest", { path: join(root, "link") })), "FORBIDDEN");
    expect(error.data).toMatchObject({ reason: "hardlink" });
    expect(error.message).not.toContain("secret\n");
    await files.copyTo(p("copy_to_guest", { path: join(root, "link"), content_base64: b64("mine") }));
    expect(readFileSync(join(root, "link"), "utf8")).toBe("mine");
    expect(readFileSync(join(outside, "secret"), "utf8")).toBe("secret");
    expect(statSync(join(outside, "secret")).nlink).toBe(1);
  });

  test("paths above PATH_MAX or with a component above NAME_MAX are INVALID_PARAMS naming the limit", async () => {
    const files = manager();
    const longName = await rejects(files.copyTo(p("copy_to_guest", { path: join(root, "n".repeat(256)), content_base64: b64("x") })), "INVALID_PARAMS");
    expect(longName.message).toContain("NAME_MAX (255)");
    // Under the schema's 4096 characters, above 4095 bytes: two-byte characters.
    const deep = join(root, ...Array.from({ length: 30 }, () => "é".repeat(70)));
    const longPath = await rejects(files.copyFrom(p("copy_from_guest", { path: deep })), "INVALID_PARAMS");
    expect(longPath.message).toContain("PATH_MAX (4095)");
    expect(readdirSync(root)).toEqual([]);
  });

  test("overwrite: false also holds when the file appears during an upload", async () => {
    const files = manager();
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "late"), overwrite: false }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("mine") }));
    writeFileSync(join(root, "late"), "theirs");
    await rejects(files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("mine") })), "FORBIDDEN");
    expect(readFileSync(join(root, "late"), "utf8")).toBe("theirs");
    expect(leftovers()).toEqual([]);
  });
});

// ================================================================ copy_to_guest / copy_from_guest

describe("copy_to_guest and copy_from_guest", () => {
  test("write then read back, with sha256, mode and sizes", async () => {
    const files = manager();
    const content = randomBytes(5000);
    const written = await files.copyTo(p("copy_to_guest", { path: join(root, "f"), content_base64: b64(content), mode: "0600" }));
    expect(written).toEqual({ path: join(root, "f"), bytes: 5000, sha256: sha(content) });
    expect(statSync(join(root, "f")).mode & 0o7777).toBe(0o600);
    const read = wire(await files.copyFrom(p("copy_from_guest", { path: join(root, "f") })));
    expect(read).toMatchObject({ bytes: 5000, size: 5000, eof: true, sha256: sha(content) });
    expect(Buffer.from(read.content_base64, "base64").equals(content)).toBe(true);
    expect(leftovers()).toEqual([]);
  });

  test("an overwritten file keeps its own mode; a new one defaults to 0644", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old", { mode: 0o640 });
    await files.copyTo(p("copy_to_guest", { path: join(root, "f"), content_base64: b64("new"), mode: 0o777 }));
    expect(statSync(join(root, "f")).mode & 0o7777).toBe(0o640);
    await files.copyTo(p("copy_to_guest", { path: join(root, "g"), content_base64: b64("new") }));
    expect(statSync(join(root, "g")).mode & 0o7777).toBe(0o644);
  });

  test("chunked reads: offset, length, eof, offset past the end", async () => {
    const files = manager();
    const content = randomBytes(10_000);
    writeFileSync(join(root, "f"), content);
    const parts: Buffer[] = [];
    for (let offset = 0; ; ) {
      const chunk = wire(await files.copyFrom(p("copy_from_guest", { path: join(root, "f"), offset, length: 4096 })));
      const bytes = Buffer.from(chunk.content_base64, "base64");
      expect(chunk.sha256).toBe(sha(bytes));
      expect(chunk.size).toBe(10_000);
      parts.push(bytes);
      offset += chunk.bytes;
      if (chunk.eof) break;
    }
    expect(parts.map((part) => part.length)).toEqual([4096, 4096, 1808]);
    expect(Buffer.concat(parts).equals(content)).toBe(true);
    const past = wire(await files.copyFrom(p("copy_from_guest", { path: join(root, "f"), offset: 20_000 })));
    expect(past).toEqual({ content_base64: "", bytes: 0, sha256: sha(""), size: 10_000, eof: true });
  });

  test("the read length defaults to, and is capped at, the largest chunk that fits a frame", async () => {
    const files = manager({ max_frame_bytes: 65_536 });
    const limit = maxChunkBytes(65_536, defaultConfig().limits.copy_chunk_bytes);
    expect(limit).toBe(Math.floor((65_536 - 1024) / 4) * 3);
    expect(files.chunkBytes).toBe(limit);
    // The reply of a full chunk fits in the frame.
    writeFileSync(join(root, "big"), randomBytes(200_000));
    const read = await files.copyFrom(p("copy_from_guest", { path: join(root, "big") }));
    expect(read.bytes).toBe(limit);
    expect(read.eof).toBe(false);
    expect(JSON.stringify({ jsonrpc: "2.0", id: 2 ** 53, result: read }).length).toBeLessThan(65_536);
    const error = await rejects(files.copyFrom(p("copy_from_guest", { path: join(root, "big"), length: limit + 1 })), "TOO_LARGE");
    expect(error.data).toEqual({ limit });
    // copy_chunk_bytes caps it too.
    expect(manager({ copy_chunk_bytes: 4096 }).chunkBytes).toBe(4096);
  });

  test("copy_to_guest above upload_max_bytes is TOO_LARGE and writes nothing", async () => {
    const files = manager({ upload_max_bytes: 100 });
    const error = await rejects(files.copyTo(p("copy_to_guest", { path: join(root, "f"), content_base64: b64(randomBytes(101)) })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 100 });
    expect(readdirSync(root)).toEqual([]);
  });
});

// ================================================================ uploads

describe("uploads", () => {
  async function upload(files: FileManager, path: string, content: Buffer, chunk = 1000) {
    const { upload_id } = await files.uploadStart(p("upload_start", { path }));
    for (let offset = 0; offset < content.length; offset += chunk) {
      await files.uploadChunk(p("upload_chunk", { upload_id, offset, content_base64: b64(content.subarray(offset, offset + chunk)) }));
    }
    return files.uploadCommit(p("upload_commit", { upload_id, sha256: sha(content) }));
  }

  test("start, chunks, commit: the file replaces its destination", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old");
    const content = randomBytes(10_500);
    const result = await upload(files, join(root, "f"), content);
    expect(result).toMatchObject({ path: join(root, "f"), bytes: 10_500, sha256: sha(content) });
    expect(readFileSync(join(root, "f")).equals(content)).toBe(true);
    expect(leftovers()).toEqual([]);
    expect(files.openUploads).toBe(0);
  });

  test("the temp file lives in the target directory until commit; the old file is untouched meanwhile", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old");
    const { upload_id, chunk_bytes } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    expect(chunk_bytes).toBe(files.chunkBytes);
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("new content") }));
    const temps = leftovers();
    expect(temps).toHaveLength(1);
    expect(temps[0]!.startsWith(`${root}/.f.kma-`)).toBe(true);
    expect(statSync(temps[0]!).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    await files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("new content") }));
    expect(readFileSync(join(root, "f"), "utf8")).toBe("new content");
    expect(leftovers()).toEqual([]);
  });

  test("pipelined chunks are applied in order", async () => {
    const files = manager();
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    const parts = [randomBytes(3000), randomBytes(3000), randomBytes(10)];
    const replies = await Promise.all(
      parts.map((part, i) => files.uploadChunk(p("upload_chunk", { upload_id, offset: i * 3000, content_base64: b64(part) }))),
    );
    expect(replies.map((r) => r.received_bytes)).toEqual([3000, 6000, 6010]);
    await files.uploadCommit(p("upload_commit", { upload_id, sha256: sha(Buffer.concat(parts)) }));
    expect(readFileSync(join(root, "f")).equals(Buffer.concat(parts))).toBe(true);
  });

  test("a chunk at the wrong offset is INVALID_PARAMS naming the expected offset; the upload goes on", async () => {
    const files = manager();
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("abc") }));
    const error = await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("abc") })), "INVALID_PARAMS");
    expect(error.data).toEqual({ expected_offset: 3 });
    expect(error.message).toContain("expected offset 3");
    await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 10, content_base64: b64("x") })), "INVALID_PARAMS");
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 3, content_base64: b64("def") }));
    await files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("abcdef") }));
    expect(readFileSync(join(root, "f"), "utf8")).toBe("abcdef");
  });

  test("a chunk above chunk_bytes is TOO_LARGE", async () => {
    const files = manager({ copy_chunk_bytes: 4096 });
    const { upload_id, chunk_bytes } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    expect(chunk_bytes).toBe(4096);
    const error = await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64(randomBytes(4097)) })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 4096 });
  });

  test("an upload above upload_max_bytes is TOO_LARGE and dropped with its temp file", async () => {
    const files = manager({ upload_max_bytes: 5000 });
    writeFileSync(join(root, "f"), "old");
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64(randomBytes(4000)) }));
    const error = await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 4000, content_base64: b64(randomBytes(1001)) })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 5000 });
    await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 4000, content_base64: b64("x") })), "NOT_FOUND");
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    expect(leftovers()).toEqual([]);
  });

  test("at most upload_max_open uploads at once", async () => {
    const files = manager({ upload_max_open: 2 });
    const a = await files.uploadStart(p("upload_start", { path: join(root, "a") }));
    await files.uploadStart(p("upload_start", { archive: true }));
    const error = await rejects(files.uploadStart(p("upload_start", { path: join(root, "c") })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 2 });
    await files.uploadAbort(p("upload_abort", { upload_id: a.upload_id }));
    await files.uploadStart(p("upload_start", { path: join(root, "c") }));
    expect(files.openUploads).toBe(2);
  });

  test("all open uploads together stay under upload_staging_max_bytes: a chunk past it is refused and can be sent again later", async () => {
    const files = manager({ upload_staging_max_bytes: 10 });
    const a = await files.uploadStart(p("upload_start", { path: join(root, "a") }));
    const b = await files.uploadStart(p("upload_start", { path: join(root, "b") }));
    await files.uploadChunk(p("upload_chunk", { upload_id: a.upload_id, offset: 0, content_base64: b64("123456") }));
    const error = await rejects(files.uploadChunk(p("upload_chunk", { upload_id: b.upload_id, offset: 0, content_base64: b64("abcdef") })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 10, staged: 6 });
    expect(error.message).toContain("It was not written; the upload goes on");
    await files.uploadAbort(p("upload_abort", { upload_id: a.upload_id }));
    expect(await files.uploadChunk(p("upload_chunk", { upload_id: b.upload_id, offset: 0, content_base64: b64("abcdef") }))).toEqual({ upload_id: b.upload_id, received_bytes: 6 });
  });

  test("abort midway leaves the old file and no temp file", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old");
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64(randomBytes(5000)) }));
    expect(await files.uploadAbort(p("upload_abort", { upload_id }))).toEqual({ upload_id, aborted: true });
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    expect(leftovers()).toEqual([]);
    await rejects(files.uploadAbort(p("upload_abort", { upload_id })), "NOT_FOUND");
    await rejects(files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("") })), "NOT_FOUND");
  });

  test("a sha256 mismatch at commit drops the upload: old file intact, no temp file", async () => {
    const files = manager();
    writeFileSync(join(root, "f"), "old");
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("new") }));
    const error = await rejects(files.uploadCommit(p("upload_commit", { upload_id, sha256: sha("other") })), "OPERATION_FAILED");
    expect(error.data).toMatchObject({ reason: "sha256_mismatch", expected: sha("other"), actual: sha("new") });
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    expect(leftovers()).toEqual([]);
    await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 3, content_base64: b64("x") })), "NOT_FOUND");
  });

  test("an idle upload is dropped with its temp file after upload_idle_timeout_seconds", async () => {
    const files = manager({ upload_idle_timeout_seconds: 0.2 });
    writeFileSync(join(root, "f"), "old");
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await files.uploadChunk(p("upload_chunk", { upload_id, offset: 0, content_base64: b64("partial") }));
    const archive = await files.uploadStart(p("upload_start", { archive: true }));
    expect(leftovers().length).toBe(2);
    for (let i = 0; i < 200 && files.openUploads > 0; i++) await Bun.sleep(50);
    expect(files.openUploads).toBe(0);
    expect(readFileSync(join(root, "f"), "utf8")).toBe("old");
    // The upload is forgotten first; its temp file and staging dir go right after, asynchronously.
    for (let i = 0; i < 100 && leftovers().length > 0; i++) await Bun.sleep(20);
    expect(leftovers()).toEqual([]);
    await rejects(files.uploadChunk(p("upload_chunk", { upload_id, offset: 7, content_base64: b64("x") })), "NOT_FOUND");
    await rejects(files.uploadCommit(p("upload_commit", { upload_id: archive.upload_id, sha256: sha("") })), "NOT_FOUND");
  });

  test("upload_start needs exactly one of path and archive", async () => {
    const files = manager();
    await rejects(files.uploadStart(p("upload_start", {})), "INVALID_PARAMS");
    await rejects(files.uploadStart(p("upload_start", { path: join(root, "f"), archive: true })), "INVALID_PARAMS");
  });
});

// ================================================================ archives

/** A minimal ustar writer for hostile archives that GNU tar will not create. */
type CraftedEntry = { name: string; type?: string; content?: Uint8Array | string; linkname?: string; mode?: number };

function craftTar(entries: CraftedEntry[]): Uint8Array<ArrayBuffer> {
  const blocks: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const entry of entries) {
    const content = typeof entry.content === "string" ? enc.encode(entry.content) : (entry.content ?? new Uint8Array());
    const h = new Uint8Array(512);
    const put = (offset: number, text: string) => h.set(enc.encode(text), offset);
    const octal = (offset: number, length: number, value: number) => put(offset, value.toString(8).padStart(length - 1, "0"));
    put(0, entry.name);
    octal(100, 8, entry.mode ?? 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, content.length);
    octal(136, 12, 1_700_000_000);
    put(148, "        ");
    put(156, entry.type ?? "0");
    put(157, entry.linkname ?? "");
    put(257, "ustar\u000000");
    let sum = 0;
    for (const byte of h) sum += byte;
    put(148, `${sum.toString(8).padStart(6, "0")}\u0000 `);
    blocks.push(h, content, new Uint8Array((512 - (content.length % 512)) % 512));
  }
  blocks.push(new Uint8Array(1024));
  return new Uint8Array(Buffer.concat(blocks));
}

function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string) => {
    for (const entry of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(d, entry.name);
      const key = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        out[`${key}/`] = "";
        walk(path, key);
      } else if (entry.isSymbolicLink()) out[key] = `-> ${path}`;
      else out[key] = readFileSync(path, "utf8");
    }
  };
  walk(dir, "");
  return out;
}

describe("copy_archive_to_guest", () => {
  async function makeSource(): Promise<string> {
    const src = join(base, "src");
    mkdirSync(join(src, "sub", "deeper"), { recursive: true });
    writeFileSync(join(src, "a.txt"), "alpha");
    writeFileSync(join(src, "sub", "b.txt"), "beta", { mode: 0o600 });
    writeFileSync(join(src, "sub", "deeper", "c.bin"), randomBytes(70_000).toString("hex"));
    writeFileSync(join(src, "sub", `${"long-name-".repeat(15)}.txt`), "long");
    return src;
  }

  for (const format of ["gnu", "pax", "ustar"] as const) {
    test(`a good archive (tar czf, ${format} format) unpacks into a new directory`, async () => {
      const files = manager();
      const src = await makeSource();
      if (format === "ustar") rmSync(join(src, "sub", `${"long-name-".repeat(15)}.txt`)); // ustar: names ≤ 100 bytes in name+prefix
      const archive = join(base, "a.tgz");
      await spawnOk(["tar", "czf", archive, `--format=${format}`, "-C", src, "."]);
      const result = await files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), archive_base64: b64(readFileSync(archive)) }));
      expect(result).toMatchObject({ dir: join(root, "dest"), files: format === "ustar" ? 3 : 4, directories: 2, replaced: false });
      expect(tree(join(root, "dest"))).toEqual(tree(src));
      expect(statSync(join(root, "dest", "sub", "b.txt")).mode & 0o777).toBe(0o600);
      expect(statSync(join(root, "dest")).mode & 0o777).toBe(0o755);
      expect(leftovers()).toEqual([]);
    });
  }

  test("an existing directory is swapped atomically for the new tree; its old content is gone, symlinks in it not followed", async () => {
    const files = manager();
    const dest = join(root, "dest");
    mkdirSync(dest, { mode: 0o750 });
    writeFileSync(join(dest, "old.txt"), "old");
    writeFileSync(join(outside, "keep"), "keep");
    symlinkSync(outside, join(dest, "link-out"));
    const result = await files.unpackArchive(
      p("copy_archive_to_guest", { dir: dest, archive_base64: b64(Bun.gzipSync(craftTar([{ name: "new.txt", content: "new" }]))) }),
    );
    expect(result).toMatchObject({ files: 1, bytes: 3, replaced: true });
    expect(tree(dest)).toEqual({ "new.txt": "new" });
    expect(statSync(dest).mode & 0o777).toBe(0o750); // The directory keeps its own mode.
    expect(readFileSync(join(outside, "keep"), "utf8")).toBe("keep");
    expect(leftovers()).toEqual([]);
  });

  test("via a committed archive upload, which the call consumes", async () => {
    const files = manager();
    const src = await makeSource();
    const archive = join(base, "a.tgz");
    await spawnOk(["tar", "czf", archive, "-C", src, "."]);
    const bytes = readFileSync(archive);
    const { upload_id } = await files.uploadStart(p("upload_start", { archive: true }));
    const staged = readdirSync(stageTmp);
    expect(staged).toHaveLength(1);
    expect(statSync(join(stageTmp, staged[0]!)).mode & 0o777).toBe(0o700);
    for (let offset = 0; offset < bytes.length; offset += 16_384) {
      await files.uploadChunk(p("upload_chunk", { upload_id, offset, content_base64: b64(bytes.subarray(offset, offset + 16_384)) }));
    }
    // Not committed yet: refused.
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), upload_id })), "INVALID_PARAMS");
    expect(await files.uploadCommit(p("upload_commit", { upload_id, sha256: sha(bytes) }))).toMatchObject({ path: null, bytes: bytes.length });
    await files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), upload_id }));
    expect(tree(join(root, "dest"))).toEqual(tree(src));
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest2"), upload_id })), "NOT_FOUND");
    expect(leftovers()).toEqual([]);
    expect(files.openUploads).toBe(0);
  });

  test("a file upload cannot be used as an archive, and exactly one source is needed", async () => {
    const files = manager();
    const { upload_id } = await files.uploadStart(p("upload_start", { path: join(root, "f") }));
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), upload_id })), "INVALID_PARAMS");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest") })), "INVALID_PARAMS");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), upload_id, archive_base64: b64("x") })), "INVALID_PARAMS");
  });

  test("unsafe entries refuse the whole archive, each listed with its reason; nothing changes", async () => {
    const files = manager();
    const dest = join(root, "dest");
    mkdirSync(dest);
    writeFileSync(join(dest, "existing"), "existing");
    const archive = craftTar([
      { name: "fine.txt", content: "fine" },
      { name: "../evil", content: "evil" },
      { name: "sub/../../evil2", content: "evil" },
      { name: "/abs/evil", content: "evil" },
      { name: "link", type: "2", linkname: "/etc/passwd" },
      { name: "hard", type: "1", linkname: "/etc/shadow" },
      { name: "dev", type: "3" },
      { name: "blk", type: "4" },
      { name: "fifo", type: "6" },
      { name: "after.txt", content: "after" },
    ]);
    const error = await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: dest, archive_base64: b64(Bun.gzipSync(archive)) })), "FORBIDDEN");
    const data = error.data as { refused: { name: string; reason: string }[]; refused_count: number };
    expect(data.refused_count).toBe(8);
    expect(data.refused.map((r) => r.name)).toEqual(["../evil", "sub/../../evil2", "/abs/evil", "link", "hard", "dev", "blk", "fifo"]);
    expect(data.refused[0]!.reason).toContain("..");
    expect(data.refused[2]!.reason).toContain("absolute");
    expect(data.refused[3]!.reason).toContain("symlink");
    expect(data.refused[4]!.reason).toContain("hardlink");
    expect(data.refused[5]!.reason).toContain("device");
    expect(data.refused[7]!.reason).toContain("FIFO");
    expect(tree(dest)).toEqual({ existing: "existing" });
    expect(readdirSync(root)).toEqual(["dest"]);
    expect(existsSync(join(base, "evil"))).toBe(false);
    expect(existsSync("/abs/evil")).toBe(false);
    expect(leftovers()).toEqual([]);
  });

  test("GNU tar archives with ../ members, symlinks and hardlinks (tar -P) are refused too", async () => {
    const files = manager();
    const work = join(base, "work", "inner");
    mkdirSync(work, { recursive: true });
    writeFileSync(join(base, "work", "evil"), "evil");
    writeFileSync(join(work, "f"), "f");
    symlinkSync("/etc/passwd", join(work, "sym"));
    await spawnOk(["ln", join(work, "f"), join(work, "hard")]);
    const archive = join(base, "bad.tgz");
    await spawnOk(["tar", "czPf", archive, "../evil", "f", "sym", "hard", join(base, "work", "evil")], work);
    const error = await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), archive_base64: b64(readFileSync(archive)) })), "FORBIDDEN");
    const reasons = Object.fromEntries((error.data as { refused: { name: string; reason: string }[] }).refused.map((r) => [r.name, r.reason]));
    expect(Object.keys(reasons).sort()).toEqual(["../evil", "hard", "sym", join(base, "work", "evil")].sort());
    expect(existsSync(join(root, "dest"))).toBe(false);
    expect(leftovers()).toEqual([]);
  });

  test("a gzip bomb is stopped at upload_max_bytes", async () => {
    const files = manager({ upload_max_bytes: 1024 * 1024 });
    const bomb = Bun.gzipSync(craftTar([{ name: "zeros", content: new Uint8Array(64 * 1024 * 1024) }]), { level: 9 });
    expect(bomb.length).toBeLessThan(200_000);
    const error = await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), archive_base64: b64(bomb) })), "TOO_LARGE");
    expect(error.data).toEqual({ limit: 1024 * 1024 });
    // Many small files adding up: stopped too.
    const many = Bun.gzipSync(craftTar(Array.from({ length: 40 }, (_, i) => ({ name: `f${i}`, content: new Uint8Array(32 * 1024) }))));
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "dest"), archive_base64: b64(many) })), "TOO_LARGE");
    expect(readdirSync(root)).toEqual([]);
  });

  test("corrupt input: not gzip, truncated gzip, bad tar checksum; the existing tree stays", async () => {
    const files = manager();
    const dest = join(root, "dest");
    mkdirSync(dest);
    writeFileSync(join(dest, "existing"), "existing");
    const good = Bun.gzipSync(craftTar([{ name: "a", content: "a".repeat(10_000) }]));
    const corruptTar = craftTar([{ name: "a", content: "a" }]);
    corruptTar[0] = 0x41; // Checksum no longer matches.
    for (const bad of [Buffer.from("plain text"), good.subarray(0, good.length - 20), Bun.gzipSync(corruptTar), Bun.gzipSync(craftTar([{ name: "a", content: "a".repeat(2000) }]).subarray(0, 1024))]) {
      await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: dest, archive_base64: b64(bad) })), "INVALID_PARAMS");
      expect(tree(dest)).toEqual({ existing: "existing" });
      expect(leftovers()).toEqual([]);
    }
  });

  test("the destination must not be a symlink, a file, a root or outside the roots", async () => {
    const files = manager();
    const archive = b64(Bun.gzipSync(craftTar([{ name: "a", content: "a" }])));
    mkdirSync(join(root, "real"));
    symlinkSync(join(root, "real"), join(root, "link"));
    writeFileSync(join(root, "file"), "file");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "link"), archive_base64: archive })), "FORBIDDEN");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "file"), archive_base64: archive })), "FORBIDDEN");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: root, archive_base64: archive })), "FORBIDDEN");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(outside, "d"), archive_base64: archive })), "FORBIDDEN");
    await rejects(files.unpackArchive(p("copy_archive_to_guest", { dir: join(root, "missing", "d"), archive_base64: archive })), "NOT_FOUND");
    expect(readdirSync(join(root, "real"))).toEqual([]);
    expect(readdirSync(outside)).toEqual([]);
    expect(leftovers()).toEqual([]);
  });

  test("setuid bits from an archive are dropped", async () => {
    const files = manager();
    await files.unpackArchive(
      p("copy_archive_to_guest", { dir: join(root, "dest"), archive_base64: b64(Bun.gzipSync(craftTar([{ name: "suid", content: "x", mode: 0o4755 }]))) }),
    );
    expect(statSync(join(root, "dest", "suid")).mode & 0o7777).toBe(0o755);
  });
});
