/**
 * The Linux packages (scripts/package.ts), built here for x64 with fast
 * compression, installed into throw-away roots: dpkg --root (maintainer scripts
 * chrootless, with DPKG_ROOT), rpm --root (scriptlets chrooted into a root with
 * busybox as /bin/sh), and the tarball's install.sh / uninstall.sh. Nothing
 * touches this machine outside those roots. lintian and rpmlint must be clean.
 * Needs dpkg-dev, rpm, lintian and rpmlint (CI installs them); skipped, saying so, without.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildPackages, extractFromPackage, lintPackages, type Packages } from "../../scripts/package.ts";
import { DEFAULT_QGA_PORT, DEFAULT_VIRTIO_PORT } from "../../src/config/schema.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { ensureBinary, makeTempDir } from "../helpers/agent-process.ts";

const TOOLS = ["dpkg-deb", "rpmbuild", "lintian", "rpmlint", "busybox"];
const missing = TOOLS.filter((tool) => Bun.which(tool) === null);

describe.skipIf(missing.length > 0)(`packages${missing.length > 0 ? ` (skipped: no ${missing.join(", ")}; apt-get install dpkg-dev rpm lintian rpmlint busybox-static)` : ""}`, () => {
  const dir = makeTempDir("kma-packages-");
  const NEXT_VERSION = AGENT_VERSION.replace(/\d+$/, (patch) => String(Number(patch) + 1));
  let current: Packages;
  let next: Packages;

  beforeAll(async () => {
    await ensureBinary();
    current = buildPackages({ arches: ["x64"], out: join(dir, "current"), version: AGENT_VERSION, fast: true }).x64!;
    next = buildPackages({ arches: ["x64"], out: join(dir, "next"), version: NEXT_VERSION, fast: true }).x64!;
  }, 180_000);

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function sh(script: string, ...args: string[]): { code: number; out: string } {
    const proc = Bun.spawnSync(["sh", "-c", script, "sh", ...args], { stdout: "pipe", stderr: "pipe" });
    return { code: proc.exitCode, out: `${proc.stdout}${proc.stderr}` };
  }

  function ok(script: string, ...args: string[]): string {
    const { code, out } = sh(script, ...args);
    if (code !== 0) throw new Error(`${script} ${args.join(" ")} exited ${code}:\n${out}`);
    return out;
  }

  /** What `systemctl enable` makes of the unit's [Install] section. */
  const WANTS = [
    "dev-virtio\\x2dports-org.kvmmanager.agent.0.device.wants/kvm-manager-agent.service",
    "dev-virtio\\x2dports-org.qemu.guest_agent.0.device.wants/kvm-manager-agent.service",
  ];

  const EDITED = "# edited by the admin\n[logging]\nlevel = \"debug\"\n";

  describe("the .deb", () => {
    test("holds the binary, the conffile config, the unit, its drop-in and the udev rule; lintian and rpmlint are clean", () => {
      const listing = ok(`dpkg-deb -c "$1" | awk '{print $1, $6}'`, current.deb);
      for (const line of [
        "-rwxr-xr-x ./usr/bin/kvm-manager-agent",
        "-rw-r--r-- ./etc/kvm-manager-agent/config.toml",
        "-rw-r--r-- ./lib/systemd/system/kvm-manager-agent.service",
        "-rw-r--r-- ./lib/systemd/system/kvm-manager-agent.service.d/qga-port.conf",
        "-rw-r--r-- ./lib/udev/rules.d/60-kvm-manager-agent.rules",
        "-rw-r--r-- ./etc/logrotate.d/kvm-manager-agent",
        "-rw-r--r-- ./usr/share/doc/kvm-manager-agent/copyright",
      ]) expect(listing).toContain(`${line}\n`);
      expect(ok(`dpkg-deb -f "$1" Package Version Architecture`, current.deb)).toBe(`Package: kvm-manager-agent\nVersion: ${AGENT_VERSION}\nArchitecture: amd64\n`);
      expect(ok(`dpkg-deb --ctrl-tarfile "$1" | tar -xOf - ./conffiles`, current.deb)).toBe("/etc/kvm-manager-agent/config.toml\n/etc/logrotate.d/kvm-manager-agent\n");
      lintPackages(current);
    }, 120_000);

    test("dpkg --root: install, upgrade to v+1 keeps the edited config, purge removes config and state", () => {
      const root = join(dir, "deb-root");
      mkdirSync(join(root, "var/lib/dpkg/info"), { recursive: true });
      mkdirSync(join(root, "var/lib/dpkg/updates"));
      writeFileSync(join(root, "var/lib/dpkg/status"), "");
      // libc6 is not in the scratch root's database; chrootless scripts get DPKG_ROOT and touch only the root.
      const dpkg = `dpkg --root="$1" --force-script-chrootless --force-depends`;
      ok(`${dpkg} -i "$2"`, root, current.deb);
      expect(ok(`dpkg-query --root="$1" -W -f='\${Status} \${Version}' kvm-manager-agent`, root)).toBe(`install ok installed ${AGENT_VERSION}`);
      const config = join(root, "etc/kvm-manager-agent/config.toml");
      expect(readFileSync(config, "utf8")).toBe(readFileSync(join(import.meta.dir, "../../installers/config.toml"), "utf8"));
      // Enabled by deb-systemd-helper in the root: each port's device wants the service.
      for (const link of WANTS) expect(readlinkSync(join(root, "etc/systemd/system", link))).toBe("/lib/systemd/system/kvm-manager-agent.service");
      expect(ok(`"$1" --version`, join(root, "usr/bin/kvm-manager-agent"))).toStartWith(`kvm-manager-agent ${AGENT_VERSION} `);

      writeFileSync(config, EDITED);
      mkdirSync(join(root, "var/lib/kvm-manager-agent"));
      writeFileSync(join(root, "var/lib/kvm-manager-agent/qga-file-handle"), "7\n");
      mkdirSync(join(root, "var/log/kvm-manager-agent"), { recursive: true });
      writeFileSync(join(root, "var/log/kvm-manager-agent/audit.jsonl"), "{}\n");
      ok(`${dpkg} -i "$2"`, root, next.deb);
      expect(ok(`dpkg-query --root="$1" -W -f='\${Version}' kvm-manager-agent`, root)).toBe(NEXT_VERSION);
      expect(readFileSync(config, "utf8")).toBe(EDITED);
      expect(existsSync(`${config}.dpkg-dist`)).toBe(false); // the package's copy did not change: nothing to ask

      ok(`${dpkg} -r kvm-manager-agent`, root);
      expect(existsSync(join(root, "usr/bin/kvm-manager-agent"))).toBe(false);
      expect(readFileSync(config, "utf8")).toBe(EDITED); // remove keeps configuration
      ok(`${dpkg} -P kvm-manager-agent`, root);
      for (const gone of ["etc/kvm-manager-agent", "var/lib/kvm-manager-agent", "var/log/kvm-manager-agent", "lib/systemd/system/kvm-manager-agent.service", ...WANTS.map((link) => `etc/systemd/system/${link}`)]) {
        expect(existsSync(join(root, gone))).toBe(false);
      }
    }, 60_000);
  });

  describe("the .rpm", () => {
    test("holds the same layout under Fedora's paths, with %config(noreplace) and the systemd scriptlets", () => {
      expect(ok(`rpm -qp --qf '%{NAME} %{VERSION} %{ARCH}\\n' "$1" 2>/dev/null`, current.rpm)).toBe(`kvm-manager-agent ${AGENT_VERSION} x86_64\n`);
      const files = ok(`rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\\n]' "$1" 2>/dev/null`, current.rpm);
      for (const line of [
        "-rwxr-xr-x /usr/bin/kvm-manager-agent",
        "-rw-r--r-- /etc/kvm-manager-agent/config.toml",
        "-rw-r--r-- /usr/lib/systemd/system/kvm-manager-agent.service",
        "-rw-r--r-- /usr/lib/systemd/system/kvm-manager-agent.service.d/qga-port.conf",
        "-rw-r--r-- /usr/lib/systemd/system-preset/80-kvm-manager-agent.preset",
        "-rw-r--r-- /usr/lib/udev/rules.d/60-kvm-manager-agent.rules",
      ]) expect(files).toContain(`${line}\n`);
      expect(ok(`rpm -qpc "$1" 2>/dev/null`, current.rpm)).toBe("/etc/kvm-manager-agent/config.toml\n/etc/logrotate.d/kvm-manager-agent\n");
      const scripts = ok(`rpm -qp --scripts "$1" 2>/dev/null`, current.rpm);
      expect(scripts).toContain("systemd-update-helper install-system-units kvm-manager-agent.service");
      expect(scripts).toContain("systemd-update-helper remove-system-units kvm-manager-agent.service");
      expect(scripts).toContain("systemd-update-helper mark-restart-system-units kvm-manager-agent.service");
      expect(scripts).not.toContain("%");
    });

    test("rpm --root: install, upgrade to v+1 keeps the edited config, erase saves it as .rpmsave", () => {
      const root = join(dir, "rpm-root");
      // Scriptlets run chrooted into the root: busybox is its /bin/sh.
      mkdirSync(join(root, "bin"), { recursive: true });
      mkdirSync(join(root, "dev"));
      writeFileSync(join(root, "dev/null"), "");
      copyFileSync(Bun.which("busybox")!, join(root, "bin/busybox"));
      chmodSync(join(root, "bin/busybox"), 0o755);
      symlinkSync("busybox", join(root, "bin/sh"));
      ok(`rpm --root "$1" --initdb`, root);
      ok(`rpm --root "$1" -i --nodeps "$2"`, root, current.rpm);
      expect(ok(`rpm --root "$1" -q kvm-manager-agent`, root)).toBe(`kvm-manager-agent-${AGENT_VERSION}-1.x86_64\n`);
      expect(ok(`"$1" --version`, join(root, "usr/bin/kvm-manager-agent"))).toStartWith(`kvm-manager-agent ${AGENT_VERSION} `);
      const config = join(root, "etc/kvm-manager-agent/config.toml");
      writeFileSync(config, EDITED);
      ok(`rpm --root "$1" -U --nodeps "$2"`, root, next.rpm);
      expect(ok(`rpm --root "$1" -q kvm-manager-agent`, root)).toBe(`kvm-manager-agent-${NEXT_VERSION}-1.x86_64\n`);
      expect(readFileSync(config, "utf8")).toBe(EDITED);
      ok(`rpm --root "$1" -e --nodeps kvm-manager-agent`, root);
      expect(existsSync(join(root, "usr/bin/kvm-manager-agent"))).toBe(false);
      expect(existsSync(config)).toBe(false);
      expect(readFileSync(`${config}.rpmsave`, "utf8")).toBe(EDITED);
    }, 60_000);
  });

  describe("the tarball", () => {
    let unpacked: string;
    beforeAll(() => {
      unpacked = join(dir, "tarball");
      mkdirSync(unpacked);
      ok(`tar -xzf "$1" -C "$2"`, current.tarball, unpacked);
      unpacked = join(unpacked, `kvm-manager-agent-${AGENT_VERSION}-linux-x64`);
    });

    for (const init of ["systemd", "sysv"] as const) {
      test(`install.sh --init ${init} and uninstall.sh, each run twice, into a scratch root with --prefix`, () => {
        const root = join(dir, `tar-root-${init}`);
        mkdirSync(join(root, "etc/logrotate.d"), { recursive: true });
        const install = () => ok(`"$1/install.sh" --root "$2" --prefix /opt/kma --init "$3"`, unpacked, root, init);
        const first = install();
        expect(first).toContain(`installed ${root}/opt/kma/bin/kvm-manager-agent\n`);
        expect(first).toContain(`installed ${root}/etc/kvm-manager-agent/config.toml\n`);
        writeFileSync(join(root, "etc/kvm-manager-agent/config.toml"), EDITED);
        expect(install()).toContain(`kept ${root}/etc/kvm-manager-agent/config.toml\n`);
        expect(readFileSync(join(root, "etc/kvm-manager-agent/config.toml"), "utf8")).toBe(EDITED);
        expect(ok(`"$1" --version`, join(root, "opt/kma/bin/kvm-manager-agent"))).toStartWith(`kvm-manager-agent ${AGENT_VERSION} `);
        const launcher = init === "systemd" ? "etc/systemd/system/kvm-manager-agent.service" : "etc/init.d/kvm-manager-agent";
        // The unit or init script runs the binary where --prefix put it.
        expect(readFileSync(join(root, launcher), "utf8")).toContain("/opt/kma/bin/kvm-manager-agent");
        expect(readFileSync(join(root, launcher), "utf8")).not.toContain("/usr/bin/kvm-manager-agent");
        expect(existsSync(join(root, "etc/udev/rules.d/60-kvm-manager-agent.rules"))).toBe(init === "systemd");
        expect(existsSync(join(root, "etc/systemd/system/kvm-manager-agent.service.d/qga-port.conf"))).toBe(init === "systemd");
        for (const link of WANTS) expect(existsSync(join(root, "etc/systemd/system", link))).toBe(init === "systemd");
        expect(existsSync(join(root, "etc/logrotate.d/kvm-manager-agent"))).toBe(true);

        const uninstall = (...flags: string[]) => ok(`"$1/uninstall.sh" --root "$2" --prefix /opt/kma "$@"`.replace('"$@"', flags.map((_, i) => `"$${i + 3}"`).join(" ")), unpacked, root, ...flags);
        const removed = uninstall();
        expect(removed).toContain(`removed ${root}/opt/kma/bin/kvm-manager-agent\n`);
        expect(removed).toContain(`removed ${root}/${launcher}\n`);
        const kept = `kept ${root}/etc/kvm-manager-agent/config.toml and the state (--purge removes them)\n`;
        expect(removed).toEndWith(kept);
        expect(uninstall()).toBe(kept); // nothing left to remove
        expect(uninstall("--purge")).toBe(`removed ${root}/etc/kvm-manager-agent\nremoved ${root}/var/lib/kvm-manager-agent\nremoved ${root}/var/log/kvm-manager-agent\n`);
        expect(uninstall("--purge")).toBe("");
        expect(ok(`find "$1" -type f`, root)).toBe("");
        expect(sh(`"$1/uninstall.sh" --bogus`, unpacked)).toEqual({ code: 2, out: expect.stringContaining("unknown option '--bogus'") });
      expect(sh(`"$1/install.sh" --prefix opt/kma --root "$2"`, unpacked, root)).toEqual({ code: 2, out: "install.sh: --prefix must be an absolute path (got 'opt/kma')\n" });
      expect(sh(`"$1/install.sh" --init upstart --root "$2"`, unpacked, root)).toEqual({ code: 2, out: "install.sh: --init must be auto, systemd or sysv (got 'upstart')\n" });
      expect(ok(`find "$1" -type f`, root)).toBe(""); // refused before writing anything
      });
    }
  });

  describe("unit, drop-in and rule", () => {
    const linux = join(import.meta.dir, "../../installers/linux");
    const unit = readFileSync(join(linux, "kvm-manager-agent.service"), "utf8");
    const portNames = [DEFAULT_VIRTIO_PORT, DEFAULT_QGA_PORT].map((path) => path.split("/").at(-1)!);

    test("the unit restarts the agent and is wanted by, not bound to, the devices of both ports the default config serves", () => {
      expect(unit).toContain("\nRestart=always\n");
      expect(unit).toContain("\nExecStart=/usr/bin/kvm-manager-agent --config /etc/kvm-manager-agent/config.toml\n");
      expect(unit).not.toContain("BindsTo=");
      // systemd escapes "-" in a path as \x2d.
      const devices = portNames.map((name) => `dev-virtio\\x2dports-${name}.device`);
      expect(unit).toContain(`\nWantedBy=${devices.join(" ")}\n`);
      expect(WANTS).toEqual(devices.map((device) => `${device}.wants/kvm-manager-agent.service`));
    });

    test("udev makes both ports device units; the drop-in takes org.qemu.guest_agent.0 from qemu-guest-agent", () => {
      const rules = readFileSync(join(linux, "60-kvm-manager-agent.rules"), "utf8");
      for (const name of portNames) expect(rules).toContain(`SUBSYSTEM=="virtio-ports", ATTR{name}=="${name}", TAG+="systemd"\n`);
      expect(readFileSync(join(linux, "qga-port.conf"), "utf8")).toEndWith("[Unit]\nConflicts=qemu-guest-agent.service\n");
    });

    test.skipIf(Bun.which("systemd-analyze") === null)("systemd-analyze verify accepts the unit with its drop-in", () => {
      const units = join(dir, "units");
      mkdirSync(join(units, "kvm-manager-agent.service.d"), { recursive: true });
      writeFileSync(join(units, "kvm-manager-agent.service"), unit.replace("/usr/bin/kvm-manager-agent", "/bin/true"));
      copyFileSync(join(linux, "qga-port.conf"), join(units, "kvm-manager-agent.service.d/qga-port.conf"));
      const { code, out } = sh(`SYSTEMD_UNIT_PATH="$1:" systemd-analyze verify --man=no "$1/kvm-manager-agent.service"`, units);
      expect(out.split("\n").filter((line) => line.includes("kvm-manager-agent"))).toEqual([]);
      expect(code).toBe(0);
    });
  });

  test("every package carries the built binary byte for byte (never stripped), and it runs", async () => {
    const built = readFileSync(await ensureBinary());
    for (const [pkg, member] of [
      [current.deb, "usr/bin/kvm-manager-agent"],
      [current.rpm, "usr/bin/kvm-manager-agent"],
      [current.tarball, `kvm-manager-agent-${AGENT_VERSION}-linux-x64/kvm-manager-agent`],
    ] as const) {
      const copy = join(dir, "extracted");
      extractFromPackage(pkg, member, copy);
      expect(Buffer.compare(readFileSync(copy), built)).toBe(0);
      chmodSync(copy, 0o755);
      expect(ok(`"$1" --version`, copy)).toStartWith(`kvm-manager-agent ${AGENT_VERSION} `);
      rmSync(copy);
    }
  }, 120_000); // three 110 MB binaries extracted and compared: seconds on a loaded machine
});
