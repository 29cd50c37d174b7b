/** What every byte-stream connection shares: writes the peer cannot take yet. */
import { describe, expect, test } from "bun:test";
import { SocketConnection } from "../src/transport/socket-connection.ts";

/** A socket that takes at most `perWrite` bytes per write() and `room` in all, recording what it got. */
function fakeSocket(perWrite: number, room: number) {
  const socket = {
    written: [] as Uint8Array[],
    writes: 0,
    room,
    write(bytes: Uint8Array) {
      socket.writes++;
      const n = Math.min(perWrite, socket.room, bytes.length);
      socket.written.push(new Uint8Array(bytes.subarray(0, n)));
      socket.room -= n;
      return n;
    },
    pause() {},
    resume() {},
    end() {},
  };
  return socket;
}

describe("BufferedConnection", () => {
  test("keeps a copy of what it could not write: the caller may overwrite its buffer once send returns", () => {
    const socket = fakeSocket(100, 3);
    const connection = new SocketConnection("test", socket as never);
    const buffer = Buffer.from("abcdefgh");
    connection.send(buffer);
    buffer.fill("z");
    socket.room = 100;
    connection.flush();
    expect(Buffer.concat(socket.written).toString()).toBe("abcdefgh");
  });

  test("bytes handed over are queued as they are, without a copy; bytes not handed over after them are still copied", () => {
    const socket = fakeSocket(100, 3);
    const connection = new SocketConnection("test", socket as never);
    const handedOver = Buffer.from("abcdefgh");
    const reused = Buffer.from("12345678");
    connection.send(handedOver, true);
    connection.send(reused);
    // Only a test touches handed-over bytes again: what the peer gets shows the queue kept the buffer itself.
    handedOver.fill("x", 3);
    reused.fill("z");
    socket.room = 100;
    connection.flush();
    expect(Buffer.concat(socket.written).toString()).toBe("abcxxxxx12345678");
  });

  test("writes on while the peer takes bytes, as a virtio-serial port does 32 KiB at a time", () => {
    const socket = fakeSocket(4, 1000);
    const connection = new SocketConnection("test", socket as never);
    connection.send(Buffer.from("0123456789abcdefghij"));
    expect(Buffer.concat(socket.written).toString()).toBe("0123456789abcdefghij");
    expect(socket.writes).toBe(5);
  });

  test("a flush after the peer was full also writes everything it takes", () => {
    const socket = fakeSocket(4, 6);
    const connection = new SocketConnection("test", socket as never);
    connection.send(Buffer.from("0123456789abcdefghij"));
    expect(Buffer.concat(socket.written).toString()).toBe("012345");
    socket.room = 1000;
    connection.flush();
    expect(Buffer.concat(socket.written).toString()).toBe("0123456789abcdefghij");
  });
});
