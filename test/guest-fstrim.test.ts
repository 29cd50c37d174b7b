/**
 * guest-fstrim's report: one entry per mount, last-mounted first, with the
 * bytes trimmed or the reason. FITRIM itself only ever runs here on
 * filesystems that cannot trim (this machine's disks are never trimmed by a
 * test); the VM test trims a real virtio disk.
 */
import { expect, test } from "bun:test";
import { errnoName } from "../src/platform/linux/libc.ts";
import { trimMountNow } from "../src/guest/fitrim.ts";
import { guestFstrim, type TrimMount } from "../src/guest/fstrim.ts";

test("every mount is reported, last-mounted first; one that fails does not stop the others", async () => {
  const seen: [string, bigint][] = [];
  const trim: TrimMount = async (path, minimum) => {
    seen.push([path, minimum]);
    return path === "/boot" ? { error: "trim not supported" } : { trimmed: path.length * 4096 };
  };
  expect(await guestFstrim(65536, ["/", "/boot", "/srv/data"], trim)).toEqual({
    paths: [
      { path: "/srv/data", trimmed: 9 * 4096, minimum: 65536 },
      { path: "/boot", error: "trim not supported" },
      { path: "/", trimmed: 4096, minimum: 65536 },
    ],
  });
  expect(seen).toEqual([
    ["/", 65536n],
    ["/boot", 65536n],
    ["/srv/data", 65536n],
  ]);
});

test("without a minimum every free extent counts (0), as qemu-ga passes it", async () => {
  expect(await guestFstrim(undefined, ["/"], async () => ({ trimmed: 0 }))).toEqual({ paths: [{ path: "/", trimmed: 0, minimum: 0 }] });
});

test("a mount that cannot be opened, and a filesystem without FITRIM, say so in qemu-ga's words", () => {
  expect(trimMountNow("/kma-no-such-mount", 0n)).toEqual({ error: "failed to open: No such file or directory" });
  expect(trimMountNow("/proc", 0n)).toEqual({ error: "trim not supported" });
});

test("by default the ioctls run on the blocking-calls worker, with the same answers", async () => {
  expect(await guestFstrim(0, ["/kma-no-such-mount", "/proc", "/kma-no-such-mount-either"])).toEqual({
    paths: [
      { path: "/kma-no-such-mount-either", error: "failed to open: No such file or directory" },
      { path: "/proc", error: "trim not supported" },
      { path: "/kma-no-such-mount", error: "failed to open: No such file or directory" },
    ],
  });
});

test("no mounts: an empty report", async () => {
  expect(await guestFstrim(0, [])).toEqual({ paths: [] });
});

test("EOPNOTSUPP is named as the kernel names it, so a filesystem that cannot trim reads 'trim not supported'", () => {
  // os.constants.errno lists ENOTSUP (the same 95) first; the reports compare against EOPNOTSUPP.
  expect(errnoName(95)).toBe("EOPNOTSUPP");
  expect(errnoName(11)).toBe("EAGAIN");
  expect(errnoName(35)).toBe("EDEADLK");
});
