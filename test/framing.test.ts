import { describe, expect, test } from "bun:test";
import { encodeFrame, FrameDecoder, HEADER_BYTES, SYNC_MARKER } from "../src/protocol/framing.ts";
import { concatBytes } from "./helpers/agent-process.ts";

type Event = { frame: string } | { oversized: number } | { sync: true };

function collect(maxFrameBytes = 1024) {
  const events: Event[] = [];
  const decoder = new FrameDecoder(
    {
      onFrame: (payload) => events.push({ frame: new TextDecoder().decode(payload) }),
      onOversizedFrame: (length) => events.push({ oversized: length }),
      onSync: () => events.push({ sync: true }),
    },
    maxFrameBytes,
  );
  return { events, decoder };
}


function header(length: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, length);
  return bytes;
}

describe("encodeFrame", () => {
  test("prefixes the UTF-8 byte length, big-endian", () => {
    const frame = encodeFrame("héllo"); // é is two bytes
    expect([...frame.subarray(0, 4)]).toEqual([0, 0, 0, 6]);
    expect(new TextDecoder().decode(frame.subarray(HEADER_BYTES))).toBe("héllo");
  });

  test("lengths above 16 bits use every header byte", () => {
    const frame = encodeFrame(new Uint8Array(0x012345));
    expect([...frame.subarray(0, 4)]).toEqual([0x00, 0x01, 0x23, 0x45]);
  });
});

describe("FrameDecoder", () => {
  test("a frame delivered one byte at a time", () => {
    const { events, decoder } = collect();
    for (const byte of encodeFrame('{"a":1}')) decoder.push(Uint8Array.of(byte));
    expect(events).toEqual([{ frame: '{"a":1}' }]);
    expect(decoder.idle).toBe(true);
  });

  test("many frames in one read, and a frame split across reads", () => {
    const { events, decoder } = collect();
    const all = concatBytes([encodeFrame("one"), encodeFrame("two"), encodeFrame("three")]);
    decoder.push(all.subarray(0, 13));
    expect(decoder.idle).toBe(false);
    decoder.push(all.subarray(13));
    expect(events).toEqual([{ frame: "one" }, { frame: "two" }, { frame: "three" }]);
  });

  test("a header split across reads", () => {
    const { events, decoder } = collect();
    const frame = encodeFrame("abc");
    decoder.push(frame.subarray(0, 2));
    decoder.push(frame.subarray(2, 3));
    decoder.push(frame.subarray(3));
    expect(events).toEqual([{ frame: "abc" }]);
  });

  test("zero-length frames are delivered as empty payloads", () => {
    const { events, decoder } = collect();
    decoder.push(concatBytes([header(0), encodeFrame("x"), header(0)]));
    expect(events).toEqual([{ frame: "" }, { frame: "x" }, { frame: "" }]);
  });

  test("a frame exactly at the limit is accepted", () => {
    const { events, decoder } = collect(16);
    decoder.push(encodeFrame("a".repeat(16)));
    expect(events).toEqual([{ frame: "a".repeat(16) }]);
  });

  test("a frame above the limit is reported once and skipped as it streams, keeping sync", () => {
    const { events, decoder } = collect(16);
    const big = encodeFrame("b".repeat(1000));
    decoder.push(big.subarray(0, 3));
    decoder.push(big.subarray(3, 10));
    expect(events).toEqual([{ oversized: 1000 }]);
    for (let at = 10; at < big.length; at += 7) decoder.push(big.subarray(at, Math.min(at + 7, big.length)));
    decoder.push(encodeFrame("next"));
    expect(events).toEqual([{ oversized: 1000 }, { frame: "next" }]);
  });

  test("an oversized frame and the next frame in the same read", () => {
    const { events, decoder } = collect(8);
    decoder.push(concatBytes([encodeFrame("x".repeat(9)), encodeFrame("ok")]));
    expect(events).toEqual([{ oversized: 9 }, { frame: "ok" }]);
  });

  test("a 4 GiB header never allocates: it only skips", () => {
    const { events, decoder } = collect(16);
    decoder.push(header(0xffffffff));
    decoder.push(new Uint8Array(1 << 20));
    expect(events).toEqual([{ oversized: 0xffffffff }]);
    expect(decoder.idle).toBe(false);
  });

  test("reset() drops a partial frame so the next stream starts clean", () => {
    const { events, decoder } = collect();
    decoder.push(encodeFrame("partial").subarray(0, 6));
    decoder.reset();
    expect(decoder.idle).toBe(true);
    decoder.push(encodeFrame("fresh"));
    expect(events).toEqual([{ frame: "fresh" }]);
  });

  test("a frame completed from a copy is not corrupted by later reads", () => {
    const frames: Uint8Array[] = [];
    const decoder = new FrameDecoder({ onFrame: (p) => frames.push(p.slice()), onOversizedFrame() {}, onSync() {} }, 1024);
    const chunk = new Uint8Array(64);
    const frame = encodeFrame("0123456789");
    chunk.set(frame.subarray(0, 8));
    decoder.push(chunk.subarray(0, 8));
    chunk.fill(0xee); // the transport reuses its buffer
    chunk.set(frame.subarray(8));
    decoder.push(chunk.subarray(0, frame.length - 8));
    expect(new TextDecoder().decode(frames[0])).toBe("0123456789");
  });

  test("frames assembled from pieces one after another, growing and shrinking, each arrive whole", () => {
    const { events, decoder } = collect(8 * 1024 * 1024);
    const texts = [100, 5000, 300, 3 * 1024 * 1024, 64, 5 * 1024 * 1024, 7].map((length, i) => String.fromCharCode(97 + i).repeat(length));
    for (const text of texts) {
      const frame = encodeFrame(text);
      for (let at = 0; at < frame.length; at += 65536) decoder.push(frame.subarray(at, at + 65536));
    }
    expect(events.map((event) => ("frame" in event ? event.frame : ""))).toEqual(texts);
  });
});

describe("resync marker", () => {
  const partial = encodeFrame('{"jsonrpc":"2.0","id":1,"method":"ping"}').subarray(0, 17);

  test("drops a partial frame left by an earlier host; decoding restarts after it", () => {
    const { events, decoder } = collect();
    decoder.push(partial);
    decoder.push(concatBytes([SYNC_MARKER, encodeFrame("fresh")]));
    expect(events).toEqual([{ sync: true }, { frame: "fresh" }]);
  });

  test("works in the middle of a header, of a payload and of a skipped oversized frame", () => {
    for (const stale of [Uint8Array.of(0, 0), partial, encodeFrame("z".repeat(5000)).subarray(0, 3000)]) {
      const { events, decoder } = collect();
      decoder.push(concatBytes([stale, SYNC_MARKER, encodeFrame("ok")]));
      expect(events.filter((e) => !("oversized" in e))).toEqual([{ sync: true }, { frame: "ok" }]);
    }
  });

  test("is recognised when split across reads, byte by byte", () => {
    const { events, decoder } = collect();
    decoder.push(partial);
    for (const byte of concatBytes([SYNC_MARKER, encodeFrame("x")])) decoder.push(Uint8Array.of(byte));
    expect(events).toEqual([{ sync: true }, { frame: "x" }]);
  });

  test("fewer than eight 0xFF bytes are data: an invalid-UTF-8 frame keeps the stream in sync", () => {
    const { events, decoder } = collect();
    const payload = new Uint8Array(16).fill(0xff, 0, 7);
    decoder.push(concatBytes([encodeFrame(payload), encodeFrame("after")]));
    expect(events.length).toBe(2);
    expect(events[1]).toEqual({ frame: "after" });
  });

  test("two markers in a row are two syncs, and frames between them are kept", () => {
    const { events, decoder } = collect();
    decoder.push(concatBytes([SYNC_MARKER, encodeFrame("a"), SYNC_MARKER, encodeFrame("b")]));
    expect(events).toEqual([{ sync: true }, { frame: "a" }, { sync: true }, { frame: "b" }]);
  });

  test("a marker right after a header that ends in 0xFF bytes (fuzz finding): one sync, and the next frame is decoded", () => {
    // 0x7FFFFFFF ends in three 0xFF: with the marker they make a run of eleven, and the marker's last three
    // bytes used to start a header 0xFFFFFF00 that swallowed the next 4 GiB of stream.
    for (const stale of [header(0x7fff_ffff), header(0x0001_ffff), Uint8Array.of(0, 0xff)]) {
      const whole = collect();
      whole.decoder.push(concatBytes([stale, SYNC_MARKER, encodeFrame("next")]));
      expect(whole.events.filter((e) => !("oversized" in e))).toEqual([{ sync: true }, { frame: "next" }]);
      const bytewise = collect();
      for (const byte of concatBytes([stale, SYNC_MARKER, encodeFrame("next")])) bytewise.decoder.push(Uint8Array.of(byte));
      expect(bytewise.events.filter((e) => !("oversized" in e))).toEqual([{ sync: true }, { frame: "next" }]);
    }
  });

  test("a run of more than eight 0xFF bytes is one marker", () => {
    const { events, decoder } = collect();
    decoder.push(concatBytes([new Uint8Array(20).fill(0xff), encodeFrame("after")]));
    expect(events).toEqual([{ sync: true }, { frame: "after" }]);
  });
});
