/** The ring where a connection copies what its peer could not take yet. */
import { describe, expect, test } from "bun:test";
import { SpillRing } from "../src/transport/spill-ring.ts";

/** A FIFO of copies as BufferedConnection keeps it, each checked against what it should still hold. */
function simulate(capacity: number, steps: number, maxCopy: number, seed: number): void {
  const ring = new SpillRing(capacity);
  let state = seed;
  const random = (n: number) => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 16) % n;
  const queue: { view: Uint8Array; expected: Uint8Array }[] = [];
  for (let step = 0; step < steps; step++) {
    if (random(3) === 0) {
      const bytes = new Uint8Array(1 + random(maxCopy)).map(() => random(256));
      const expected = bytes.slice();
      const inRing = queue.reduce((sum, item) => sum + (ring.holds(item.view) ? item.view.length : 0), 0);
      const view = ring.copy(bytes);
      // A copy of its own only when the ring really is full (a copy never wraps, so up to half can be lost to that).
      if (!ring.holds(view)) expect(inRing + bytes.length).toBeGreaterThan(capacity / 2);
      bytes.fill(0); // The caller reuses its buffer.
      expect(view).toEqual(expected);
      queue.push({ view, expected });
    } else if (queue.length > 0) {
      const head = queue[0]!;
      const written = random(head.view.length + 1);
      if (ring.holds(head.view)) ring.consumed(written);
      if (written === head.view.length) queue.shift();
      else {
        head.view = head.view.subarray(written);
        head.expected = head.expected.subarray(written);
      }
    }
    if (step % 16 === 0) for (const item of queue) expect(item.view).toEqual(item.expected);
  }
}

describe("SpillRing", () => {
  test("copies stay intact until consumed, and go to memory of their own only when the ring is full", () => {
    for (const seed of [1, 2, 3, 4]) simulate(4096, 3000, 900, seed);
  });

  test("two large replies in flight, written in pieces, never need memory of their own", () => {
    const ring = new SpillRing(8 * 1024 * 1024);
    const reply = new Uint8Array(2_800_000);
    const queue: Uint8Array[] = [];
    for (let round = 0; round < 100; round++) {
      while (queue.length < 2) queue.push(ring.copy(reply.subarray(200_000)));
      for (const item of queue) expect(ring.holds(item)).toBe(true);
      let head = queue[0]!;
      while (head.length > 0) {
        const written = Math.min(212_992, head.length);
        ring.consumed(written);
        head = head.subarray(written);
      }
      queue.shift();
    }
  });

  test("a copy larger than the ring gets memory of its own; clear() lets the memory go", () => {
    const ring = new SpillRing(1024);
    const big = ring.copy(new Uint8Array(2048).fill(7));
    expect(ring.holds(big)).toBe(false);
    expect(big.every((b) => b === 7)).toBe(true);
    const small = ring.copy(new Uint8Array(10));
    expect(ring.holds(small)).toBe(true);
    ring.clear();
    expect(ring.holds(small)).toBe(false);
  });

  test("a Buffer's bytes are copied, not viewed", () => {
    const ring = new SpillRing(16);
    const source = Buffer.alloc(64, 1);
    const copy = ring.copy(source);
    source.fill(2);
    expect(copy.every((b) => b === 1)).toBe(true);
  });
});
