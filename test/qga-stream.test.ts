import { describe, expect, test } from "bun:test";
import { qmpStringify } from "../src/qga/json.ts";
import { QgaStreamParser } from "../src/qga/stream.ts";

function collect(maxBytes?: number) {
  const events: string[] = [];
  const parser = new QgaStreamParser(
    {
      onMessage: (bytes) => events.push(`msg ${Buffer.from(bytes).toString()}`),
      onReset: (pending) => events.push(`reset ${pending}`),
      onTooLarge: (limit) => events.push(`too-large ${limit}`),
      onStray: (byte) => events.push(`stray ${String.fromCharCode(byte)}`),
    },
    maxBytes,
  );
  const push = (...chunks: (string | number[])[]) => {
    for (const chunk of chunks) parser.push(typeof chunk === "string" ? Buffer.from(chunk) : Uint8Array.from(chunk));
  };
  return { events, push };
}

describe("QGA stream parser", () => {
  test("a message ends when its braces balance; newlines are optional", () => {
    const { events, push } = collect();
    push('{"execute":"guest-ping"}{"execute":"guest-info"}\n  {"a":[1,{"b":2}]}');
    expect(events).toEqual(['msg {"execute":"guest-ping"}', 'msg {"execute":"guest-info"}', 'msg {"a":[1,{"b":2}]}']);
  });

  test("messages split anywhere across reads, byte by byte", () => {
    const { events, push } = collect();
    for (const ch of '{"execute":\n"guest-sync", "arguments":{"id":5}}') push(ch);
    expect(events).toEqual(['msg {"execute":\n"guest-sync", "arguments":{"id":5}}']);
  });

  test("braces and escaped quotes inside strings do not count", () => {
    const { events, push } = collect();
    push('{"a":"}{[\\"]"}', '{"b":"\\\\"}');
    expect(events).toEqual(['msg {"a":"}{[\\"]"}', 'msg {"b":"\\\\"}']);
  });

  test("top-level scalars are messages too (and draw 'must be a JSON object' later)", () => {
    const { events, push } = collect();
    push('123\n"str" true{"x":1}');
    expect(events).toEqual(["msg 123", 'msg "str"', "msg true", 'msg {"x":1}']);
  });

  test("a 0xFF byte drops the pending message, is reported, and the next message is read", () => {
    const { events, push } = collect();
    push('{"execute":"gue', [0xff], '{"execute":"guest-ping"}');
    expect(events).toEqual(["reset 15", 'msg {"execute":"guest-ping"}']);
  });

  test("a 0xFF between messages resets nothing but is still reported", () => {
    const { events, push } = collect();
    push([0xff], '{"a":1}');
    expect(events).toEqual(["reset 0", 'msg {"a":1}']);
  });

  test("a closing bracket with nothing open is a stray", () => {
    const { events, push } = collect();
    push('}{"a":1}');
    expect(events).toEqual(["stray }", 'msg {"a":1}']);
  });

  test("a message above the limit is reported once, skipped to its end, and the next one read", () => {
    const { events, push } = collect(32);
    push('{"data":"', "x".repeat(20), "y".repeat(20), '"}', '{"ok":1}');
    expect(events).toEqual(["too-large 32", 'msg {"ok":1}']);
  });
});

describe("qmpStringify", () => {
  test("qemu's separators, and members in QDict hash order whatever order they are given in", () => {
    expect(qmpStringify({ return: {}, id: "abc" })).toBe('{"return": {}, "id": "abc"}');
    expect(qmpStringify({ error: { class: "GenericError", desc: "x" }, id: 1 })).toBe('{"id": 1, "error": {"class": "GenericError", "desc": "x"}}');
    // Seen from qemu-ga 7.2's guest-get-osinfo, fields given in qapi schema order:
    const osinfo = { "kernel-release": "r", "kernel-version": "v", machine: "m", id: "i", name: "n", "pretty-name": "p", version: "V", "version-id": "I" };
    expect(Object.keys(JSON.parse(qmpStringify(osinfo)))).toEqual(["name", "kernel-release", "version", "pretty-name", "version-id", "kernel-version", "machine", "id"]);
    expect(qmpStringify({ error: { class: "GenericError", desc: "x" } })).toBe('{"error": {"class": "GenericError", "desc": "x"}}');
    expect(qmpStringify({ a: [1, true, null, "s"] })).toBe('{"a": [1, true, null, "s"]}');
  });

  test("doubles as C's %.17g, integers and bigints as integers", () => {
    // Expected values from C's printf("%.17g") (Python's % operator).
    expect(qmpStringify(1700000000.123456)).toBe("1700000000.123456");
    expect(qmpStringify(0.1)).toBe("0.10000000000000001");
    expect(qmpStringify(0.5)).toBe("0.5");
    expect(qmpStringify(1e21 + 0.5)).toBe("1e+21");
    expect(qmpStringify(1.5e-7)).toBe("1.4999999999999999e-07");
    expect(qmpStringify(1.5e-5)).toBe("1.5e-05");
    expect(qmpStringify(-0.00012345)).toBe("-0.00012344999999999999");
    expect(qmpStringify(12)).toBe("12");
    expect(qmpStringify(1795245328758865000n)).toBe("1795245328758865000");
  });

  test("non-ASCII and control characters are escaped as qemu does", () => {
    expect(qmpStringify("é\u2028\n\"\\😀")).toBe('"\\u00E9\\u2028\\n\\"\\\\\\uD83D\\uDE00"');
    expect(JSON.parse(qmpStringify("é\u2028\n\"\\😀"))).toBe("é\u2028\n\"\\😀");
  });
});
