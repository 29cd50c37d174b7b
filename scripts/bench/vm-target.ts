/**
 * The in-VM half of the benchmark: one guest (scripts/vm/vm.ts) runs our agent
 * on org.kvmmanager.agent.0 and Debian's qemu-ga on org.qemu.guest_agent.0,
 * both started by the guest's init at the same moment; the host drives both
 * through QEMU's chardev sockets, i.e. over real virtio-serial.
 */
import { guestImage, TestVm } from "../vm/vm.ts";
import { nativeEndpoint, qgaEndpoint, type Endpoint } from "./raw-conn.ts";

export interface VmTarget {
  vm: TestVm;
  ours: Endpoint;
  theirs: Endpoint;
  /** ms from QEMU's start to each agent's first answer (same boot for both). */
  firstAnswerMs: { ours: number; theirs: number };
}

/** Retry connect + handshake until the agent answers; returns when it first did. */
async function firstAnswer(connect: () => Promise<Endpoint>, timeoutMs: number): Promise<{ endpoint: Endpoint; at: number }> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const endpoint = await connect();
      return { endpoint, at: performance.now() };
    } catch (error) {
      last = error;
      await Bun.sleep(20);
    }
  }
  throw new Error(`no answer within ${timeoutMs} ms: ${String(last)}`);
}

/** `hostCpus`: where QEMU runs (the bench's server CPU); it would otherwise share the client's. */
export async function startVmTarget(binary: string, hostCpus?: string): Promise<VmTarget> {
  const image = await guestImage(binary);
  // Without the test image's vsock agent: a second agent of ours starting on the one vCPU would slow our first answer.
  const vm = await TestVm.boot({ image, append: "agent_args=--log-level,warn kma_no_vsock_agent", hostCpus });
  try {
    // Short handshakes, retried: the guest's port swallows what a host writes before the agent opens it.
    const [ours, theirs] = await Promise.all([
      firstAnswer(() => nativeEndpoint(vm.agentSocket, vm.pid, 300), 120_000),
      firstAnswer(() => qgaEndpoint(vm.qgaSocket, vm.pid, 300), 120_000),
    ]);
    return {
      vm,
      ours: ours.endpoint,
      theirs: theirs.endpoint,
      firstAnswerMs: { ours: ours.at - vm.startedAt, theirs: theirs.at - vm.startedAt },
    };
  } catch (error) {
    await vm.stop();
    throw error;
  }
}
