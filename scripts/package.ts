/**
 * Linux packages from the compiled binaries in dist/ (run `bun scripts/build.ts --all` first,
 * or `npm run package`, which does both):
 *   kvm-manager-agent_<v>_<amd64|arm64>.deb      built with dpkg-deb (no debhelper)
 *   kvm-manager-agent-<v>-1.<x86_64|aarch64>.rpm   built with rpmbuild from installers/linux/rpm
 *   kvm-manager-agent-<v>-linux-<x64|arm64>.tar.gz binary, unit, udev rule, init script, install.sh
 * the Windows installer, when dist/ has the Windows exe:
 *   kvm-manager-agent-<v>-x64.msi                  built with wixl from installers/windows (docs/windows.md)
 * and dist/SHA256SUMS over the binaries and packages.
 *
 * Usage: bun scripts/package.ts [--arch x64|arm64]... [--out DIR] [--version V] [--fast] [--lint]
 *   --version V  package version (default package.json's; tests build v+1 to prove upgrades)
 *   --fast       gzip -1 instead of xz: for tests, which do not care about size
 *   --lint       run lintian and rpmlint on the results; any error or warning fails
 *
 * Every package is checked to carry the binary byte for byte (never stripped) and, for the
 * host's architecture, that the packaged binary answers --version.
 */
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import pkg from "../package.json" with { type: "json" };
import { binaryPath, DIST, TARGETS, writeChecksums } from "./build.ts";

const ROOT = join(import.meta.dir, "..");
const INSTALLERS = join(ROOT, "installers");
const LINUX = join(INSTALLERS, "linux");

interface Arch {
  target: "linux-x64" | "linux-arm64";
  deb: string;
  rpm: string;
}
const ARCHES: Record<string, Arch> = {
  x64: { target: "linux-x64", deb: "amd64", rpm: "x86_64" },
  arm64: { target: "linux-arm64", deb: "arm64", rpm: "aarch64" },
};
const HOST_ARCH = process.arch === "x64" ? "x64" : process.arch === "arm64" ? "arm64" : null;

export interface PackageOptions {
  arches: string[];
  out: string;
  version: string;
  fast: boolean;
}

export interface Packages {
  deb: string;
  rpm: string;
  tarball: string;
}

function run(argv: string[], options: { cwd?: string; env?: Record<string, string> } = {}): string {
  const proc = Bun.spawnSync(argv, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdout: "pipe", stderr: "pipe" });
  if (proc.exitCode !== 0) throw new Error(`${argv.join(" ")} failed (${proc.exitCode}):\n${proc.stdout}${proc.stderr}`);
  return proc.stdout.toString();
}

function need(tool: string, apt: string): void {
  if (Bun.which(tool) === null) throw new Error(`${tool} not found: apt-get install ${apt}`);
}

/** The last commit's time: package file times do not change from one build of a commit to the next. */
function sourceDateEpoch(): string {
  if (process.env.SOURCE_DATE_EPOCH) return process.env.SOURCE_DATE_EPOCH;
  const proc = Bun.spawnSync(["git", "log", "-1", "--format=%ct"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  return proc.exitCode === 0 ? proc.stdout.toString().trim() : "0";
}

/** The commit's date as each changelog format writes it: "Sat, 21 Nov 2026 08:00:00 +0000" / "Sat Nov 21 2026". */
function changelogDate(format: "deb" | "rpm"): string {
  const date = new Date(Number(sourceDateEpoch()) * 1000);
  if (format === "deb") return date.toUTCString().replace("GMT", "+0000");
  const [weekday, day, month, year] = date.toUTCString().replace(",", "").split(" ");
  return `${weekday} ${month} ${day} ${year}`;
}

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Copies src to root/rel with mode (and the directories above it 0755). */
function place(root: string, rel: string, src: string | Buffer, mode: number): void {
  const dest = join(root, rel);
  const parts = rel.split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const dir = join(root, ...parts.slice(0, i));
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o755);
  }
  if (typeof src === "string") copyFileSync(src, dest);
  else writeFileSync(dest, src);
  chmodSync(dest, mode);
}

/** The oldest glibc the binary runs on: the highest GLIBC_x.y version it references. */
function glibcFloor(binary: string): string {
  const versions = [...run(["readelf", "--version-info", "-W", binary]).matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])] as const);
  const [major, minor] = versions.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a), [2, 0] as const);
  return `${major}.${minor}`;
}

/** Maintainer (deb) and Packager (rpm). The project has no mailing address yet: a placeholder to replace. */
const MAINTAINER = "kvm-manager-agent developers <kvm-manager-agent@users.noreply.github.com>";

const DESCRIPTION = `Guest agent for KVM/QEMU virtual machines
 kvm-manager-agent runs inside a KVM/QEMU guest and lets the host manage it
 without a network: JSON-RPC 2.0 on the virtio-serial port
 org.kvmmanager.agent.0, and the QEMU guest agent protocol (libvirt, Proxmox,
 OpenStack, KubeVirt) on org.qemu.guest_agent.0. One self-contained executable.`;

function buildDeb(arch: Arch, opts: PackageOptions, work: string): string {
  need("dpkg-deb", "dpkg");
  const stage = join(work, `deb-${arch.deb}`);
  const binary = binaryPath(arch.target);
  place(stage, "usr/bin/kvm-manager-agent", binary, 0o755);
  place(stage, "etc/kvm-manager-agent/config.toml", join(INSTALLERS, "config.toml"), 0o644);
  place(stage, "lib/systemd/system/kvm-manager-agent.service", join(LINUX, "kvm-manager-agent.service"), 0o644);
  place(stage, "lib/systemd/system/kvm-manager-agent.service.d/qga-port.conf", join(LINUX, "qga-port.conf"), 0o644);
  place(stage, "lib/udev/rules.d/60-kvm-manager-agent.rules", join(LINUX, "60-kvm-manager-agent.rules"), 0o644);
  place(stage, "etc/logrotate.d/kvm-manager-agent", join(LINUX, "kvm-manager-agent.logrotate"), 0o644);
  const doc = "usr/share/doc/kvm-manager-agent";
  place(stage, `${doc}/copyright`, join(LINUX, "deb/copyright"), 0o644);
  place(stage, `${doc}/install.md.gz`, gzipSync(readFileSync(join(ROOT, "docs/install.md")), { level: 9 }), 0o644);
  const changelog = `kvm-manager-agent (${opts.version}) unstable; urgency=medium\n\n  * Release ${opts.version}.\n\n -- ${MAINTAINER}  ${changelogDate("deb")}\n`;
  place(stage, `${doc}/changelog.gz`, gzipSync(changelog, { level: 9 }), 0o644);
  place(stage, "usr/share/lintian/overrides/kvm-manager-agent", join(LINUX, "deb/lintian-overrides"), 0o644);

  const md5sums: string[] = [];
  let installedBytes = 0;
  const walk = (dir: string) => {
    for (const entry of readdirSync(join(stage, dir), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const rel = dir ? `${dir}/${entry.name}` : entry.name;
      if (rel === "DEBIAN") continue;
      if (entry.isDirectory()) walk(rel);
      else {
        installedBytes += statSync(join(stage, rel)).size;
        md5sums.push(`${createHash("md5").update(readFileSync(join(stage, rel))).digest("hex")}  ${rel}`);
      }
    }
  };
  walk("");
  const control = [
    "Package: kvm-manager-agent",
    `Version: ${opts.version}`,
    `Architecture: ${arch.deb}`,
    `Maintainer: ${MAINTAINER}`,
    `Installed-Size: ${Math.ceil(installedBytes / 1024)}`,
    `Depends: libc6 (>= ${glibcFloor(binary)})`,
    "Section: admin",
    "Priority: optional",
    `Description: ${DESCRIPTION}`,
    "",
  ].join("\n");
  place(stage, "DEBIAN/control", Buffer.from(control), 0o644);
  place(stage, "DEBIAN/conffiles", Buffer.from("/etc/kvm-manager-agent/config.toml\n/etc/logrotate.d/kvm-manager-agent\n"), 0o644);
  place(stage, "DEBIAN/md5sums", Buffer.from(md5sums.map((line) => `${line}\n`).join("")), 0o644);
  for (const script of ["postinst", "prerm", "postrm"]) place(stage, `DEBIAN/${script}`, join(LINUX, "deb", script), 0o755);

  const out = join(opts.out, `kvm-manager-agent_${opts.version}_${arch.deb}.deb`);
  const compression = opts.fast ? ["-Zgzip", "-z1"] : ["-Zxz", "-z6"];
  run(["dpkg-deb", "--root-owner-group", ...compression, "--build", stage, out], { env: { SOURCE_DATE_EPOCH: sourceDateEpoch() } });
  return out;
}

function buildRpm(arch: Arch, opts: PackageOptions, work: string): string {
  need("rpmbuild", "rpm");
  const top = join(work, `rpm-${arch.rpm}`);
  const sources = join(top, "SOURCES");
  mkdirSync(sources, { recursive: true });
  place(sources, "kvm-manager-agent", binaryPath(arch.target), 0o755);
  place(sources, "config.toml", join(INSTALLERS, "config.toml"), 0o644);
  // Fedora keeps units and rules under /usr/lib.
  place(sources, "kvm-manager-agent.service", join(LINUX, "kvm-manager-agent.service"), 0o644);
  place(sources, "qga-port.conf", join(LINUX, "qga-port.conf"), 0o644);
  place(sources, "kvm-manager-agent.preset", join(LINUX, "kvm-manager-agent.preset"), 0o644);
  place(sources, "60-kvm-manager-agent.rules", join(LINUX, "60-kvm-manager-agent.rules"), 0o644);
  place(sources, "install.md", join(ROOT, "docs/install.md"), 0o644);
  place(sources, "kvm-manager-agent.logrotate", join(LINUX, "kvm-manager-agent.logrotate"), 0o644);
  place(sources, "systemd-macros", join(LINUX, "rpm/systemd-macros"), 0o644);
  const [version, release = "1"] = opts.version.split("-");
  run(
    [
      "rpmbuild",
      "-bb",
      "--quiet",
      `--target=${arch.rpm}-linux`,
      "--define",
      `_topdir ${top}`,
      "--define",
      `agent_version ${version}`,
      "--define",
      `agent_release ${release}`,
      "--define",
      `agent_packager ${MAINTAINER}`,
      "--define",
      `agent_date ${changelogDate("rpm")}`,
      "--define",
      `_binary_payload ${opts.fast ? "w1.gzdio" : "w6T.xzdio"}`,
      "--define",
      "use_source_date_epoch_as_buildtime 1",
      "--define",
      "clamp_mtime_to_source_date_epoch 1",
      join(LINUX, "rpm/kvm-manager-agent.spec"),
    ],
    { env: { SOURCE_DATE_EPOCH: sourceDateEpoch() } },
  );
  const built = join(top, "RPMS", arch.rpm, `kvm-manager-agent-${version}-${release}.${arch.rpm}.rpm`);
  const out = join(opts.out, basename(built));
  renameSync(built, out);
  return out;
}

function buildTarball(arch: Arch, opts: PackageOptions, work: string): string {
  const name = `kvm-manager-agent-${opts.version}-${arch.target}`;
  const stage = join(work, `tar-${arch.target}`);
  place(stage, `${name}/kvm-manager-agent`, binaryPath(arch.target), 0o755);
  place(stage, `${name}/config.toml`, join(INSTALLERS, "config.toml"), 0o644);
  for (const file of ["kvm-manager-agent.service", "qga-port.conf", "60-kvm-manager-agent.rules", "kvm-manager-agent.logrotate"]) {
    place(stage, `${name}/${file}`, join(LINUX, file), 0o644);
  }
  for (const file of ["kvm-manager-agent.init", "install.sh", "uninstall.sh"]) place(stage, `${name}/${file}`, join(LINUX, file), 0o755);
  place(stage, `${name}/install.md`, join(ROOT, "docs/install.md"), 0o644);
  const out = join(opts.out, `${name}.tar.gz`);
  const tar = Bun.spawnSync(
    ["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", `--mtime=@${sourceDateEpoch()}`, "-C", stage, "-cf", "-", name],
    { stdout: "pipe", stderr: "pipe" },
  );
  if (tar.exitCode !== 0) throw new Error(`tar failed: ${tar.stderr}`);
  writeFileSync(out, gzipSync(tar.stdout, { level: opts.fast ? 1 : 9 }));
  return out;
}

/** The file at `member` in each package, unpacked with the tools a user has. */
export function extractFromPackage(pkgFile: string, member: string, dest: string): void {
  const script = pkgFile.endsWith(".deb")
    ? `dpkg-deb --fsys-tarfile "$0" | tar -xOf - "./$1" > "$2"`
    : pkgFile.endsWith(".rpm")
      ? `rpm2cpio "$0" | cpio -i --quiet --to-stdout "./$1" > "$2"`
      : `tar -xzOf "$0" "$1" > "$2"`;
  run(["sh", "-c", script, pkgFile, member, dest]);
}

/** Never stripped: the packaged binary is the built one, byte for byte, and runs. */
function verifyBinary(pkgFile: string, member: string, arch: string, work: string): void {
  const copy = join(work, `check-${basename(pkgFile)}`);
  extractFromPackage(pkgFile, member, copy);
  if (sha256(copy) !== sha256(binaryPath(ARCHES[arch]!.target))) throw new Error(`${pkgFile}: the packaged binary differs from dist/ (stripped?)`);
  if (arch === HOST_ARCH) {
    chmodSync(copy, 0o755);
    const version = run([copy, "--version"]);
    if (!version.startsWith(`kvm-manager-agent ${pkg.version} `)) throw new Error(`${pkgFile}: packaged binary says '${version.trim()}'`);
  }
  rmSync(copy);
}

/** lintian and rpmlint: any error or warning fails (justified exceptions live in the override files). */
export function lintPackages(packages: Packages): string {
  need("lintian", "lintian");
  need("rpmlint", "rpmlint");
  const lintian = Bun.spawnSync(["lintian", "--fail-on", "error,warning", "--suppress-tags", "", packages.deb], { stdout: "pipe", stderr: "pipe" });
  const lintianOut = `${lintian.stdout}${lintian.stderr}`;
  if (lintian.exitCode !== 0) throw new Error(`lintian ${basename(packages.deb)}:\n${lintianOut}`);
  const rpmlint = Bun.spawnSync(["rpmlint", "--rpmlintrc", join(LINUX, "rpm/rpmlintrc"), packages.rpm], { stdout: "pipe", stderr: "pipe" });
  const rpmlintOut = `${rpmlint.stdout}${rpmlint.stderr}`;
  if (rpmlint.exitCode !== 0 || !/ 0 errors, 0 warnings/.test(rpmlintOut)) throw new Error(`rpmlint ${basename(packages.rpm)}:\n${rpmlintOut}`);
  return `${lintianOut}${rpmlintOut}`;
}

/**
 * The MSI: wixl builds it from installers/windows/kvm-manager-agent.wxs; msibuild then marks the default
 * config's component permanent and never-overwritten, which wixl cannot say (an upgrade or uninstall keeps the admin's edits).
 */
export function buildMsi(opts: { out: string; version: string }): string {
  need("wixl", "wixl");
  need("msibuild", "msitools");
  const exe = binaryPath("windows-x64");
  if (!existsSync(exe)) throw new Error(`${exe} is missing: bun scripts/build.ts windows-x64`);
  // ProductVersion is numbers only: 0.1.0-2 is packaged as 0.1.0.2.
  const version = opts.version.replace("-", ".");
  if (!/^\d+\.\d+\.\d+(\.\d+)?$/.test(version)) throw new Error(`MSI version must be numeric (got '${opts.version}')`);
  mkdirSync(opts.out, { recursive: true });
  const out = join(opts.out, `kvm-manager-agent-${opts.version}-x64.msi`);
  // wixl takes sources relative to its working directory.
  const relative = (path: string) => path.slice(ROOT.length + 1);
  run(
    ["wixl", "-a", "x64", "-D", `Version=${version}`, "-D", `ExeSource=${relative(exe)}`, "-D", "ConfigSource=installers/config.toml", "-o", out, "installers/windows/kvm-manager-agent.wxs"],
    { cwd: ROOT },
  );
  // 0x100 64-bit, 0x80 NeverOverwrite, 0x10 Permanent.
  run(["msibuild", out, "-q", "UPDATE Component SET Attributes = 400 WHERE Component = 'DefaultConfig'"]);
  return out;
}

/** One table of an MSI as rows of named columns, read with msiinfo. */
export function readMsiTable(msi: string, table: string): Record<string, string>[] {
  const [columns, , , ...rows] = run(["msiinfo", "export", msi, table]).split(/\r?\n/).filter((line) => line !== "");
  const names = columns!.split("\t");
  return rows.map((row) => Object.fromEntries(row.split("\t").map((value, i) => [names[i], value])));
}

export function buildPackages(opts: PackageOptions): Record<string, Packages> {
  mkdirSync(opts.out, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), "kma-package-"));
  const results: Record<string, Packages> = {};
  try {
    for (const name of opts.arches) {
      const arch = ARCHES[name];
      if (!arch) throw new Error(`unknown --arch '${name}'; known: ${Object.keys(ARCHES).join(", ")}`);
      if (!existsSync(binaryPath(arch.target))) throw new Error(`${binaryPath(arch.target)} is missing: bun scripts/build.ts ${arch.target}`);
      const packages = { deb: buildDeb(arch, opts, work), rpm: buildRpm(arch, opts, work), tarball: buildTarball(arch, opts, work) };
      verifyBinary(packages.deb, "usr/bin/kvm-manager-agent", name, work);
      verifyBinary(packages.rpm, "usr/bin/kvm-manager-agent", name, work);
      verifyBinary(packages.tarball, `kvm-manager-agent-${opts.version}-${arch.target}/kvm-manager-agent`, name, work);
      results[name] = packages;
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return results;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      arch: { type: "string", multiple: true },
      out: { type: "string" },
      version: { type: "string" },
      fast: { type: "boolean" },
      lint: { type: "boolean" },
    },
  });
  const opts: PackageOptions = { arches: values.arch ?? Object.keys(ARCHES), out: values.out ?? DIST, version: values.version ?? pkg.version, fast: values.fast ?? false };
  const results = buildPackages(opts);
  const files = Object.values(results).flatMap((p) => [p.deb, p.rpm, p.tarball]);
  if (existsSync(binaryPath("windows-x64"))) files.push(buildMsi(opts));
  for (const file of files) console.log(`packaged ${file} (${(statSync(file).size / 1e6).toFixed(1)} MB)`);
  if (values.lint) for (const packages of Object.values(results)) console.log(lintPackages(packages).trim() || `lint clean: ${basename(packages.deb)}, ${basename(packages.rpm)}`);
  if (opts.out === DIST) {
    const binaries = Object.values(TARGETS).map((t) => t.file).filter((file) => existsSync(join(DIST, file)));
    console.log(`wrote ${await writeChecksums([...binaries, ...files.map((file) => basename(file))])}`);
  }
}
