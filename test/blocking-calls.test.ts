/**
 * The blocking-calls worker runs FIFREEZE and FITRIM off the event loop and answers each call with what the same
 * call gives on this thread. Only mounts that cannot freeze or trim are touched here (the VM tests freeze and trim
 * a guest's disk).
 */
import { expect, test } from "bun:test";
import { freezeMountNow } from "../src/fsfreeze/fifreeze.ts";
import { trimMountNow } from "../src/guest/fitrim.ts";
import { runBlocking } from "../src/runtime/blocking-calls.ts";

test("each job answers as it does on the calling thread", async () => {
  for (const mountpoint of ["/kma-no-such-mount", "/proc"]) {
    expect(await runBlocking("fifreeze", { mountpoint })).toEqual(freezeMountNow(mountpoint));
    expect(await runBlocking("fitrim", { mountpoint, minimum: 4096n })).toEqual(trimMountNow(mountpoint, 4096n));
  }
  expect(await runBlocking("fifreeze", { mountpoint: "/kma-no-such-mount" })).toEqual({ error: "failed to open /kma-no-such-mount: No such file or directory" });
  expect(await runBlocking("fifreeze", { mountpoint: "/proc" })).toEqual({ frozen: false });
});

test("calls made together get their own answers, in order", async () => {
  const names = Array.from({ length: 8 }, (_, i) => `/kma-no-such-mount-${i}`);
  const answers = await Promise.all(names.map((mountpoint) => runBlocking("fifreeze", { mountpoint })));
  expect(answers).toEqual(names.map((name) => ({ error: `failed to open ${name}: No such file or directory` })));
});

test("after the worker has stopped for being idle, the next call starts it again", async () => {
  expect(await runBlocking("fifreeze", { mountpoint: "/proc" })).toEqual({ frozen: false });
  await Bun.sleep(1_300);
  expect(await runBlocking("fifreeze", { mountpoint: "/proc" })).toEqual({ frozen: false });
});
