/**
 * QGA fuzz input: random and malformed pieces of the JSON stream, and valid
 * read-only requests mutated byte by byte. The QGA stream has no framing, so
 * any piece may leave the parser mid-value; the runner resynchronises with
 * 0xFF + guest-sync-delimited, as libvirt does.
 */
import type { Rng } from "./random.ts";

/**
 * Commands the fuzzed agent must refuse: everything that changes this machine
 * (its clock, power, passwords, filesystems). Blocked in its config, so a
 * mutation that happens to spell one of them is harmless.
 */
export const QGA_FUZZ_BLOCKED = [
  "guest-shutdown",
  "guest-set-time",
  "guest-set-vcpus",
  "guest-set-memory-blocks",
  "guest-fsfreeze-freeze",
  "guest-fsfreeze-freeze-list",
  "guest-fsfreeze-thaw",
  "guest-fstrim",
  "guest-set-user-password",
  "guest-ssh-add-authorized-keys",
  "guest-ssh-remove-authorized-keys",
  "guest-exec",
  "guest-file-open",
  "guest-file-write",
  "guest-suspend-disk",
  "guest-suspend-ram",
  "guest-suspend-hybrid",
];

const COMMANDS = ["guest-ping", "guest-info", "guest-sync", "guest-get-time", "guest-exec", "guest-file-read", "guest-shutdown", "nope", "", "__proto__"];
/** Mutation bases: read-only, and many edits away from any command that changes the guest. */
const VALID = [
  '{"execute":"guest-ping"}',
  '{"execute":"guest-info","id":"i"}',
  '{"execute":"guest-sync","arguments":{"id":7}}',
  '{"execute":"guest-get-osinfo"}',
  '{"execute":"guest-get-host-name","id":3}',
  '{"execute":"guest-get-users"}',
  '{"execute":"guest-get-load"}',
];

const encoder = new TextEncoder();

/** One piece of the stream; 0xFF is left to the runner's resync markers. */
export function qgaPieces(rng: Rng): () => { kind: string; bytes: Uint8Array } {
  const int = (n: number) => rng.int(n);
  const pick = <T>(items: readonly T[]) => rng.pick(items);
  const text = (kind: string, value: string) => ({ kind, bytes: encoder.encode(value) });
  return () => {
    switch (int(12)) {
      case 0:
        return { kind: "random-bytes", bytes: rng.bytes(int(200), 255) };
      case 1:
        return text("unbalanced-open", "{".repeat(1 + int(3000)));
      case 2:
        return text("unbalanced-close", "}".repeat(1 + int(5)) + "]");
      case 3:
        return text(
          "bad-arguments",
          `{"execute":"${pick(COMMANDS)}","arguments":${pick(['{"id":"x"}', "[]", "5", '{"handle":-1}', '{"mode":"bogus"}', '{"path":"/etc/shadow"}', "{"])}}`,
        );
      case 4:
        return text("unterminated-string", `"${"\\".repeat(int(10))}unterminated`);
      case 5:
        return text("scalars", `${int(1e9)} true null -1e400 "s" `);
      case 6:
        return text("extra-member", JSON.stringify({ execute: pick(COMMANDS), id: pick([1, "a", null, [1], { x: 1 }]), extra: int(9) }));
      case 7:
        return text("deep-arguments", `{"execute":"guest-ping","arguments":${"[".repeat(int(500))}`);
      case 8:
        return { kind: "invalid-utf8", bytes: Uint8Array.of(0xc3, 0x28, 0x7b, 0x22, 0xe2, 0x82) };
      case 9:
        return text("random-json", JSON.stringify(rng.json()));
      case 10: {
        const mutated = rng.mutate(encoder.encode(pick(VALID)));
        // 0xFF would resync the parser: that is the marker's job.
        return { kind: "mutated", bytes: mutated.map((byte) => (byte === 0xff ? 0xfe : byte)) };
      }
      default:
        return text("sync-with-id", `{"execute":"guest-sync","arguments":{"id":${int(100)}},"id":"q${int(100)}"}`);
    }
  };
}
