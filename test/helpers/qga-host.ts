/** A host speaking QGA to an agent the way libvirt does (test/vm/*: over QEMU chardev sockets of real ports). */

/**
 * The first line after the last 0xFF in `received`, without its newline, once
 * it is complete: the reply to guest-sync-delimited. Undefined until a 0xFF
 * and a newline after it have arrived; the error line the agent gives for the
 * host's own 0xFF comes first and may arrive alone.
 */
export function lineAfterDelimiter(received: Uint8Array): string | undefined {
  const delimiter = received.lastIndexOf(0xff);
  if (delimiter < 0) return undefined;
  const rest = Buffer.from(received.subarray(delimiter + 1)).toString();
  const end = rest.indexOf("\n");
  return end < 0 ? undefined : rest.slice(0, end);
}

/**
 * libvirt's handshake: 0xFF, then guest-sync-delimited with a fresh id; skip
 * everything up to the 0xFF that precedes the reply, and check the id.
 */
export async function libvirtSync(
  socketPath: string,
  id: number,
): Promise<{ send(request: object): Promise<unknown>; sendNoReply(request: object, waitMs: number): Promise<string>; close(): void }> {
  let received = Buffer.alloc(0);
  const socket = await Bun.connect({
    unix: socketPath,
    socket: {
      data(_, chunk) {
        received = Buffer.concat([received, chunk]);
      },
    },
  });
  // A guest still booting, or a slow line (isa-serial), takes a while to answer the first time.
  const deadline = Date.now() + 60_000;
  for (;;) {
    received = Buffer.alloc(0);
    socket.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }))]));
    const tryUntil = Date.now() + 1_000;
    while (Date.now() < tryUntil) {
      // As libvirt: one line after the last 0xFF is the delimited reply (retries may have more behind it).
      const line = lineAfterDelimiter(received);
      if (line !== undefined && JSON.parse(line).return === id) {
        // Retries sent while the guest booted are answered too, later: replies come in order, so
        // once a fresh sync is answered nothing older is still on its way.
        const flushId = id + 1_000_000;
        received = Buffer.alloc(0);
        socket.write(JSON.stringify({ execute: "guest-sync", arguments: { id: flushId } }));
        const until = Date.now() + 10_000;
        while (!received.toString().includes(`{"return": ${flushId}}\n`) && Date.now() < until) await Bun.sleep(5);
        received = Buffer.alloc(0);
        return {
          async send(request) {
            received = Buffer.alloc(0);
            socket.write(JSON.stringify(request));
            const until = Date.now() + 30_000;
            while (!received.includes(0x0a) && Date.now() < until) await Bun.sleep(5);
            return JSON.parse(received.toString());
          },
          /** For commands that answer nothing on success: whatever arrived within waitMs. */
          async sendNoReply(request, waitMs) {
            received = Buffer.alloc(0);
            socket.write(JSON.stringify(request));
            await Bun.sleep(waitMs);
            return received.toString();
          },
          close: () => socket.end(),
        };
      }
      await Bun.sleep(20);
    }
    if (Date.now() > deadline) throw new Error("no guest-sync-delimited answer");
  }
}
