/**
 * Windows exec rules (command resolution in the system directories, env,
 * cwd, code page decoding) and Windows path rules, with the file system
 * faked; test/e2e/wine-platform.test.ts runs them for real under Wine.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { authorizeCommand, buildAllowlist, buildChildEnv, checkCwd, resolveCommand, type FsProbe } from "../src/exec/policy.ts";
import { codePageTranscoder, windowsCommandPlatform, windowsForbiddenEnvReason } from "../src/exec/windows.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { windowsLexical, WindowsPathPolicy } from "../src/files/windows.ts";

const SYSTEM32 = "C:\\Windows\\System32";
const platform = windowsCommandPlatform(SYSTEM32);

/** A case-insensitive fake file system: lower-cased path → real path. */
function fakeFs(files: Record<string, string>, dirs: string[] = []): FsProbe {
  const byKey = new Map(Object.entries(files).map(([path, real]) => [path.toLowerCase(), real]));
  const dirKeys = new Set(dirs.map((dir) => dir.toLowerCase()));
  return {
    realpath(path) {
      const real = byKey.get(path.toLowerCase());
      if (!real) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
      return real;
    },
    kind: (path) => (byKey.has(path.toLowerCase()) ? "file" : dirKeys.has(path.toLowerCase()) ? "directory" : null),
    executable: (path) => byKey.has(path.toLowerCase()),
  };
}

const FILES = {
  "C:\\Windows\\System32\\cmd.exe": "C:\\Windows\\System32\\cmd.exe",
  "C:\\Windows\\System32\\whoami.exe": "C:\\Windows\\System32\\whoami.exe",
  "C:\\Windows\\System32\\tree.com": "C:\\Windows\\System32\\tree.com",
  "C:\\Windows\\System32\\evil.bat": "C:\\Windows\\System32\\evil.bat",
  "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
  "C:\\Users\\Public\\cmd.exe": "C:\\Users\\Public\\cmd.exe",
};

describe("exec on Windows: commands", () => {
  const fs = fakeFs(FILES, ["C:\\Users", SYSTEM32]);

  test("a name is found in the system directories as name.exe or name.com, never in PATH", () => {
    expect(resolveCommand("whoami", fs, platform)).toEqual({ ok: true, command: { path: "C:\\Windows\\System32\\whoami.exe", real: "C:\\Windows\\System32\\whoami.exe" } });
    expect(resolveCommand("tree", fs, platform)).toMatchObject({ ok: true, command: { path: "C:\\Windows\\System32\\tree.com" } });
    expect(resolveCommand("powershell", fs, platform)).toMatchObject({ ok: true, command: { path: "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" } });
    // Batch files would run through cmd.exe, a shell nobody allowed: not runnable by name or by path.
    expect(resolveCommand("evil.bat", fs, platform)).toEqual({ ok: false, reason: "not-found" });
    expect(resolveCommand("C:\\Windows\\System32\\evil.bat", fs, platform)).toEqual({ ok: false, reason: "not-found" });
  });

  test("paths and names compare case-insensitively against the allowlist; a same-named file elsewhere is not allowed", () => {
    const allowlist = buildAllowlist(["cmd.exe", "C:\\WINDOWS\\system32\\WHOAMI.EXE"], fs, platform);
    expect(allowlist.ignored).toEqual([]);
    expect(authorizeCommand("CMD", allowlist, fs, platform).path).toBe("C:\\Windows\\System32\\cmd.exe");
    expect(authorizeCommand("c:/windows/system32/cmd.exe", allowlist, fs, platform).path).toBe("C:\\Windows\\System32\\cmd.exe");
    expect(authorizeCommand("whoami", allowlist, fs, platform).configured).toBe("C:\\WINDOWS\\system32\\WHOAMI.EXE");
    expect(() => authorizeCommand("C:\\Users\\Public\\cmd.exe", allowlist, fs, platform)).toThrow(new RpcError("FORBIDDEN", "Command 'C:\\Users\\Public\\cmd.exe' is not in allowed_commands"));
    expect(() => authorizeCommand("tree", allowlist, fs, platform)).toThrow("is not in allowed_commands");
  });

  test("drive-relative, device, UNC and relative command paths are refused, saying which", () => {
    const allowlist = buildAllowlist(["cmd.exe"], fs, platform);
    const refusal = (command: string) => {
      try {
        authorizeCommand(command, allowlist, fs, platform);
      } catch (error) {
        return (error as RpcError).message;
      }
      return "allowed";
    };
    expect(refusal("C:cmd.exe")).toBe("Command 'C:cmd.exe' is refused: the path must not be drive-relative (C:foo); use C:\\foo");
    expect(refusal("\\\\?\\C:\\Windows\\System32\\cmd.exe")).toContain("must not be a \\\\?\\ or \\\\.\\ device path");
    expect(refusal("\\\\.\\C:\\Windows\\System32\\cmd.exe")).toContain("device path");
    expect(refusal("\\\\server\\share\\cmd.exe")).toContain("must not be a UNC path");
    expect(refusal("System32\\cmd.exe")).toContain("must be an absolute path with a drive");
    expect(refusal(".\\cmd.exe")).toContain("must be an absolute path with a drive");
  });

  test("the child's environment: a fixed base, Windows's code-loading variables refused case-insensitively", () => {
    const env = buildChildEnv({ temp: "D:\\t", GREETING: "hi" }, platform);
    expect(env).toEqual({
      SystemRoot: "C:\\Windows",
      windir: "C:\\Windows",
      SystemDrive: "C:",
      ComSpec: "C:\\Windows\\System32\\cmd.exe",
      Path: "C:\\Windows\\System32;C:\\Windows;C:\\Windows\\System32\\Wbem;C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
      PATHEXT: ".COM;.EXE",
      TMP: "C:\\Windows\\Temp",
      temp: "D:\\t", // replaces TEMP rather than sitting beside it
      GREETING: "hi",
    });
    for (const name of ["Path", "PATHEXT", "comspec", "SystemRoot", "WINDIR", "PSModulePath", "__COMPAT_LAYER", "COR_PROFILER", "CORECLR_PROFILER_PATH", "COMPlus_EnableDiagnostics", "DOTNET_STARTUP_HOOKS", "PYTHONPATH", "NODE_OPTIONS"]) {
      expect([name, windowsForbiddenEnvReason(name)]).toEqual([name, expect.any(String)]);
      expect(() => buildChildEnv({ [name]: "x" }, platform)).toThrow(`Environment variable '${name}' is refused`);
    }
    // Linux-only loader variables mean nothing to Windows.
    expect(windowsForbiddenEnvReason("LD_PRELOAD")).toBeNull();
    expect(windowsForbiddenEnvReason("GLIBC_TUNABLES")).toBeNull();
  });

  test("cwd: the system directory by default; drive paths only", () => {
    expect(checkCwd(undefined, fs, platform)).toBe(SYSTEM32);
    expect(checkCwd("C:\\Users", fs, platform)).toBe("C:\\Users");
    expect(() => checkCwd("C:Users", fs, platform)).toThrow("Invalid params: cwd must not be drive-relative (C:foo); use C:\\foo, got 'C:Users'");
    expect(() => checkCwd("\\\\server\\share", fs, platform)).toThrow("cwd must not be a UNC path");
    expect(() => checkCwd("C:\\nowhere", fs, platform)).toThrow("Working directory 'C:\\nowhere' does not exist");
  });
});

describe("exec on Windows: output code pages", () => {
  const decode = (codePage: number, chunks: number[][]) => {
    const make = codePageTranscoder(codePage);
    if (!make) return null;
    const transcoder = make();
    return Buffer.concat([...chunks.map((chunk) => transcoder.push(new Uint8Array(chunk))), transcoder.end()]).toString("utf8");
  };

  test("OEM 437 and 850 (no WHATWG decoder) by table; ANSI and DBCS code pages by TextDecoder", () => {
    expect(decode(437, [[0x68, 0x82, 0x6c, 0x6c, 0x6f, 0xb0, 0xe1, 0xff]])).toBe("héllo░ß\u00a0");
    expect(decode(850, [[0x9b, 0x9d, 0xb7, 0xd5, 0xee]])).toBe("øØÀı¯");
    expect(decode(1252, [[0x68, 0xe9, 0x80]])).toBe("hé€");
    expect(decode(1251, [[0xcf, 0xf0, 0xe8]])).toBe("При");
    expect(decode(866, [[0x8f, 0xe0, 0xa8]])).toBe("При");
  });

  test("a multi-byte character split across chunks comes out whole", () => {
    // Shift_JIS "日本" = 93 fa 96 7b, split inside the first character.
    expect(decode(932, [[0x93], [0xfa, 0x96], [0x7b]])).toBe("日本");
  });

  test("UTF-8 (65001) and unknown code pages pass the bytes as they are", () => {
    expect(codePageTranscoder(65001)).toBeNull();
    expect(codePageTranscoder(12345)).toBeNull();
  });
});

describe("file paths on Windows", () => {
  const refusal = (path: string) => {
    try {
      windowsLexical(path);
    } catch (error) {
      const rpc = error as RpcError;
      return [rpc.code, (rpc.data as { reason?: string } | undefined)?.reason, rpc.message];
    }
    return "allowed";
  };

  test("plain drive paths are normalised", () => {
    expect(windowsLexical("c:\\ProgramData\\kma\\.\\a//b.txt")).toBe("C:\\ProgramData\\kma\\a\\b.txt");
    expect(windowsLexical("D:/data/file.tar.gz")).toBe("D:\\data\\file.tar.gz");
  });

  test("each refused form says why", () => {
    const cases: [string, string, string][] = [
      ["C:foo.txt", "drive_relative", "drive-relative paths (C:foo) are not allowed"],
      ["\\\\?\\C:\\ProgramData\\x", "device_path", "device paths are not allowed"],
      ["\\\\.\\PhysicalDrive0", "device_path", "device paths are not allowed"],
      ["//?/C:/x", "device_path", "device paths are not allowed"],
      ["\\\\server\\share\\x", "unc", "UNC paths (\\\\server\\share) are not allowed"],
      ["relative\\x", "relative", "must be absolute, with a drive"],
      ["\\ProgramData\\x", "relative", "must be absolute, with a drive"],
      ["C:\\ProgramData\\file.txt:secret", "alternate_data_stream", "'file.txt:secret' names an alternate data stream"],
      ["C:\\ProgramData\\file.txt::$DATA", "alternate_data_stream", "alternate data stream"],
      ["C:\\ProgramData\\CON", "reserved_name", "'CON' is a reserved device name"],
      ["C:\\ProgramData\\nul.txt", "reserved_name", "'nul.txt' is a reserved device name"],
      ["C:\\ProgramData\\Com1.tar.gz", "reserved_name", "reserved device name"],
      ["C:\\ProgramData\\LPT9\\x", "reserved_name", "reserved device name"],
      ["C:\\ProgramData\\aux .txt", "reserved_name", "reserved device name"],
      ["C:\\ProgramData\\x\\..\\..\\Windows", "dot_dot", "'..' components are not allowed"],
      ["C:\\ProgramData\\file.txt.", "trailing_dot_or_space", "ends in a dot or a space"],
      ["C:\\ProgramData\\file.txt ", "trailing_dot_or_space", "ends in a dot or a space"],
      ["C:\\ProgramData\\a?b", "invalid_name", "a character Windows does not allow"],
      ["C:\\ProgramData\\a\u0001b", "invalid_name", "a character Windows does not allow"],
      ["C:\\", "root", "names a drive's root directory"],
      ["C:\\x\0y", "nul_byte", "NUL byte"],
    ];
    for (const [path, reason, message] of cases) {
      const [code, gotReason, gotMessage] = refusal(path) as [number, string, string];
      expect([path, code, gotReason]).toEqual([path, -32001, reason]);
      expect(gotMessage).toContain(message);
    }
    // Names that only look like devices are files.
    for (const path of ["C:\\ProgramData\\CONSOLE", "C:\\ProgramData\\com10", "C:\\ProgramData\\nul-report.txt", "C:\\ProgramData\\lpt"]) expect(refusal(path)).toBe("allowed");
    expect(refusal(`C:\\${"a".repeat(256)}`)).toEqual([-32602, "too_long", expect.stringContaining("above 255")]);
  });

  test("roots compare case-insensitively and component-wise; the real path (junctions, 8.3 names) must stay under one", async () => {
    const links: Record<string, string> = {
      "c:\\programdata\\kvm-manager-agent\\files": "C:\\ProgramData\\kvm-manager-agent\\files",
      "c:\\programdata\\kvm-manager-agent\\files\\a.txt": "C:\\ProgramData\\kvm-manager-agent\\files\\a.txt",
      "c:\\programdata\\kvm-manager-agent\\files\\junction": "C:\\Windows",
      "c:\\progra~3\\kvm-manager-agent\\files\\a.txt": "C:\\ProgramData\\kvm-manager-agent\\files\\a.txt",
      "c:\\programdata\\kvm-manager-agent\\filesx": "C:\\ProgramData\\kvm-manager-agent\\filesx",
    };
    const realpath = (path: string) => {
      const real = links[path.toLowerCase()];
      if (!real) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
      return real;
    };
    const policy = new WindowsPathPolicy(["C:\\PROGRAMDATA\\kvm-manager-agent\\files"], realpath);
    expect(policy.roots).toEqual(["C:\\ProgramData\\kvm-manager-agent\\files"]);
    expect(policy.resolveExisting("c:\\programdata\\KVM-MANAGER-AGENT\\files\\A.TXT")).toBe("C:\\ProgramData\\kvm-manager-agent\\files\\a.txt");
    expect(policy.resolveExisting("C:\\PROGRA~3\\kvm-manager-agent\\files\\a.txt")).toBe("C:\\ProgramData\\kvm-manager-agent\\files\\a.txt");
    expect(() => policy.resolveExisting("C:\\ProgramData\\kvm-manager-agent\\files\\junction")).toThrow("it is outside allowed_file_paths");
    expect(() => policy.resolveExisting("C:\\ProgramData\\kvm-manager-agent\\filesx")).toThrow("it is outside allowed_file_paths");
    await expect(policy.resolveForWrite("C:\\ProgramData\\kvm-manager-agent\\files\\junction\\x.dll", false)).rejects.toThrow("it is outside allowed_file_paths");
    await expect(policy.resolveForWrite("C:\\ProgramData\\kvm-manager-agent\\files\\new\\x.txt", false)).rejects.toThrow("does not exist (create_dirs creates it)");
    expect(await policy.resolveForWrite("c:\\programdata\\kvm-manager-agent\\files\\b.txt", false)).toEqual({
      dir: "C:\\ProgramData\\kvm-manager-agent\\files",
      name: "b.txt",
      target: "C:\\ProgramData\\kvm-manager-agent\\files\\b.txt",
    });
  });
});
