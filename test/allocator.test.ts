import { describe, expect, test } from "bun:test";
import { allocatorStep, movesBulkData, PURGE_DELAY_VARIABLE, RESTARTED_VARIABLE } from "../src/runtime/allocator.ts";
import { METHOD_NAMES } from "../src/schema/methods.ts";

describe("allocatorStep", () => {
  test("a first start restarts with the purge delay and the marker, keeping the rest of the environment", () => {
    const step = allocatorStep({ PATH: "/usr/bin", NOTIFY_SOCKET: "/run/systemd/notify", GONE: undefined }, "1000");
    expect(step).toEqual({ restartWith: { PATH: "/usr/bin", NOTIFY_SOCKET: "/run/systemd/notify", [PURGE_DELAY_VARIABLE]: "1000", [RESTARTED_VARIABLE]: "1000" } });
  });

  test("the restarted process goes on and drops both variables, so the commands it runs do not inherit them", () => {
    expect(allocatorStep({ PATH: "/usr/bin", [PURGE_DELAY_VARIABLE]: "1000", [RESTARTED_VARIABLE]: "1000" }, "1000")).toEqual({
      dropFromEnv: [RESTARTED_VARIABLE, PURGE_DELAY_VARIABLE],
    });
  });

  test("an operator's purge delay is kept as it is, and nothing restarts", () => {
    expect(allocatorStep({ [PURGE_DELAY_VARIABLE]: "250" }, "1000")).toEqual({ dropFromEnv: [] });
  });

  test("a marker left for another delay, without the variable, does not stop a process setting its own", () => {
    expect(allocatorStep({ [RESTARTED_VARIABLE]: "-1" }, "1000")).toEqual({
      restartWith: { [RESTARTED_VARIABLE]: "1000", [PURGE_DELAY_VARIABLE]: "1000" },
    });
  });
});

describe("movesBulkData: which runs start again for the purge delay", () => {
  test("the agent, with or without options, and as qemu-ga", () => {
    expect(movesBulkData([])).toBe(true);
    expect(movesBulkData(["--transport", "unix-listen", "--path", "/run/s"])).toBe(true);
    expect(movesBulkData(["-m", "virtio-serial", "-p", "/dev/virtio-ports/org.qemu.guest_agent.0"])).toBe(true);
  });

  test("push and pull, and no other host command", () => {
    expect(movesBulkData(["push", "a.iso", "/tmp/a.iso", "--socket", "/run/s"])).toBe(true);
    expect(movesBulkData(["pull", "/tmp/a.iso", "a.iso", "--socket", "/run/s"])).toBe(true);
    for (const verb of ["call", "methods", ...METHOD_NAMES]) expect([verb, movesBulkData([verb, "--socket", "/run/s"])]).toEqual([verb, false]);
  });
});
