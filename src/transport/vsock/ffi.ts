/**
 * Listening sockets of families Bun cannot create itself (AF_VSOCK), made with
 * libc through bun:ffi and handed to Bun.listen({ fd }). The same calls make an
 * AF_UNIX socket, which is how this layer is tested on hosts without vsock.
 */
import { errno, libc, LibcError } from "../../platform/linux/libc.ts";

export const AF_UNIX = 1;
export const AF_VSOCK = 40;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
/** Any local CID: accept connections addressed to this guest. */
export const VMADDR_CID_ANY = 0xffffffff;

/** struct sockaddr_vm (linux/vm_sockets.h): 16 bytes in host byte order. */
export function sockaddrVm(port: number, cid: number = VMADDR_CID_ANY): Uint8Array {
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, AF_VSOCK, true);
  view.setUint32(4, port, true);
  view.setUint32(8, cid, true);
  return bytes;
}

/** struct sockaddr_un with a NUL-terminated path. */
export function sockaddrUn(path: string): Uint8Array {
  const encoded = new TextEncoder().encode(path);
  if (encoded.length >= 108) throw new Error(`unix socket path is longer than 107 bytes: ${path}`);
  const bytes = new Uint8Array(2 + encoded.length + 1);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(encoded, 2);
  return bytes;
}

/** The host's side: socket() + connect(); returns the connected fd (for Bun.connect({ fd })). */
export function connectStreamSocket(family: number, address: Uint8Array): number {
  const lib = libc();
  const fd = lib.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new LibcError("socket", errno());
  if (lib.connect(fd, address, address.length) !== 0) {
    const code = errno();
    lib.close(fd);
    throw new LibcError("connect", code);
  }
  return fd;
}

/** socket() + bind() + listen(); returns the listening fd or throws naming the failed call and errno. */
export function listenStreamSocket(family: number, address: Uint8Array, backlog = 16): number {
  const lib = libc();
  const fd = lib.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new LibcError("socket", errno());
  for (const [call, result] of [
    ["bind", () => lib.bind(fd, address, address.length)],
    ["listen", () => lib.listen(fd, backlog)],
  ] as const) {
    if (result() !== 0) {
      const code = errno();
      lib.close(fd);
      throw new LibcError(call, code);
    }
  }
  return fd;
}
