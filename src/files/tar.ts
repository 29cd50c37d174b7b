/**
 * A streaming tar reader: ustar, pax ('x' headers; 'g' ignored) and GNU long
 * names ('L'/'K'), in 512-byte blocks. Bytes go in with feed(); what they
 * complete comes out as events. It never buffers more than one header or one
 * bounded metadata record, so memory stays flat whatever the archive size.
 */

export const BLOCK = 512;
/** pax and GNU long-name records above this are refused (they are names, not content). */
export const MAX_META_BYTES = 1024 * 1024;

export type TarEntryType = "file" | "directory" | "symlink" | "hardlink" | "character-device" | "block-device" | "fifo" | "unsupported";

export interface TarEntry {
  name: string;
  type: TarEntryType;
  /** The raw type flag, for messages about unsupported types. */
  flag: string;
  size: number;
  mode: number;
  mtime: number;
  linkname: string;
}

export type TarEvent =
  | { kind: "entry"; entry: TarEntry }
  | { kind: "data"; bytes: Uint8Array }
  | { kind: "entry-end" }
  | { kind: "end" };

export class TarFormatError extends Error {
  override name = "TarFormatError";
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

type State = "header" | "data" | "meta" | "pad" | "end";

export class TarReader {
  private state: State = "header";
  private readonly header = new Uint8Array(BLOCK);
  private headerFilled = 0;
  private remaining = 0;
  private padding = 0;
  private meta: Uint8Array | null = null;
  private metaFilled = 0;
  private metaFlag = "";
  private pax: Record<string, string> = {};
  private longName: string | null = null;
  private longLink: string | null = null;
  private inEntry = false;
  /** Headers parsed (entries and metadata records): callers bound it. */
  headers = 0;

  get ended(): boolean {
    return this.state === "end";
  }

  /** Parse `chunk`; the returned data events are views into it, valid until the next call. */
  feed(chunk: Uint8Array): TarEvent[] {
    const events: TarEvent[] = [];
    let at = 0;
    while (at < chunk.length && this.state !== "end") {
      switch (this.state) {
        case "header": {
          const take = Math.min(BLOCK - this.headerFilled, chunk.length - at);
          this.header.set(chunk.subarray(at, at + take), this.headerFilled);
          this.headerFilled += take;
          at += take;
          if (this.headerFilled === BLOCK) {
            this.headerFilled = 0;
            this.onHeader(events);
          }
          break;
        }
        case "data": {
          const take = Math.min(this.remaining, chunk.length - at);
          events.push({ kind: "data", bytes: chunk.subarray(at, at + take) });
          this.remaining -= take;
          at += take;
          if (this.remaining === 0) this.endData(events);
          break;
        }
        case "meta": {
          const take = Math.min(this.meta!.length - this.metaFilled, chunk.length - at);
          this.meta!.set(chunk.subarray(at, at + take), this.metaFilled);
          this.metaFilled += take;
          at += take;
          if (this.metaFilled === this.meta!.length) this.endMeta();
          break;
        }
        case "pad": {
          const take = Math.min(this.padding, chunk.length - at);
          this.padding -= take;
          at += take;
          if (this.padding === 0) this.state = "header";
          break;
        }
      }
    }
    if (this.state === "end" && this.inEntry) throw new TarFormatError("archive ends inside an entry");
    return events;
  }

  /** Call when the input is exhausted: a truncated archive is an error. */
  finish(): TarEvent[] {
    if (this.state === "end") return [];
    if (this.state === "header" && this.headerFilled === 0 && !this.inEntry && this.headers > 0 && !this.pending()) {
      // No end-of-archive blocks: tolerated (some writers omit them) when cut at an entry boundary.
      this.state = "end";
      return [{ kind: "end" }];
    }
    throw new TarFormatError("the archive is truncated");
  }

  private pending(): boolean {
    return this.longName !== null || this.longLink !== null || Object.keys(this.pax).length > 0;
  }

  private onHeader(events: TarEvent[]): void {
    const h = this.header;
    if (h.every((byte) => byte === 0)) {
      if (this.pending()) throw new TarFormatError("the archive ends after a metadata header");
      this.state = "end";
      events.push({ kind: "end" });
      return;
    }
    verifyChecksum(h);
    this.headers++;
    const flag = h[156] === 0 ? "0" : String.fromCharCode(h[156]!);
    const size = parseNumber(h, 124, 12, "size");
    if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
      if (size > MAX_META_BYTES) throw new TarFormatError(`a '${flag}' metadata record of ${size} bytes is too large`);
      this.metaFlag = flag;
      this.meta = new Uint8Array(size);
      this.metaFilled = 0;
      this.padding = pad(size);
      this.state = "meta";
      if (size === 0) this.endMeta();
      return;
    }
    const ustar = cString(h, 257, 6) === "ustar" && h[262] === 0; // POSIX; GNU's "ustar  " has no prefix field.
    let name = cString(h, 0, 100);
    if (ustar) {
      const prefix = cString(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    name = this.pax.path ?? this.longName ?? name;
    const linkname = this.pax.linkpath ?? this.longLink ?? cString(h, 157, 100);
    const paxSize = this.pax.size;
    let dataSize = size;
    if (paxSize !== undefined) {
      if (!/^\d+$/.test(paxSize)) throw new TarFormatError(`bad pax size '${paxSize}'`);
      dataSize = Number(paxSize);
      if (!Number.isSafeInteger(dataSize)) throw new TarFormatError(`bad pax size '${paxSize}'`);
    }
    const paxMtime = this.pax.mtime !== undefined ? Number.parseFloat(this.pax.mtime) : Number.NaN;
    this.pax = {};
    this.longName = null;
    this.longLink = null;

    const type = entryType(flag);
    // Only files carry content; others may still declare a size (skip it).
    const entry: TarEntry = {
      name,
      type,
      flag,
      size: type === "file" ? dataSize : 0,
      mode: parseNumber(h, 100, 8, "mode") & 0o7777,
      mtime: Number.isFinite(paxMtime) ? paxMtime : parseNumber(h, 136, 12, "mtime"),
      linkname,
    };
    events.push({ kind: "entry", entry });
    this.inEntry = true;
    const skip = type === "directory" || type === "hardlink" || type === "symlink" ? 0 : dataSize;
    this.remaining = skip;
    this.padding = pad(skip);
    if (skip === 0) this.endData(events);
    else this.state = "data";
  }

  private endData(events: TarEvent[]): void {
    events.push({ kind: "entry-end" });
    this.inEntry = false;
    this.state = this.padding > 0 ? "pad" : "header";
  }

  private endMeta(): void {
    const bytes = this.meta!;
    this.meta = null;
    switch (this.metaFlag) {
      case "x":
        this.pax = parsePax(bytes);
        break;
      case "g":
        break; // Global defaults: none of them may rename entries here.
      case "L":
        this.longName = cString(bytes, 0, bytes.length);
        break;
      case "K":
        this.longLink = cString(bytes, 0, bytes.length);
        break;
    }
    this.state = this.padding > 0 ? "pad" : "header";
  }
}

function entryType(flag: string): TarEntryType {
  switch (flag) {
    case "0":
    case "7":
      return "file";
    case "5":
      return "directory";
    case "1":
      return "hardlink";
    case "2":
      return "symlink";
    case "3":
      return "character-device";
    case "4":
      return "block-device";
    case "6":
      return "fifo";
    default:
      return "unsupported";
  }
}

function pad(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

function cString(bytes: Uint8Array, offset: number, length: number): string {
  let end = offset;
  const limit = offset + length;
  while (end < limit && bytes[end] !== 0) end++;
  return utf8.decode(bytes.subarray(offset, end));
}

/** Octal (NUL/space padded) or GNU base-256 (high bit set). */
function parseNumber(h: Uint8Array, offset: number, length: number, field: string): number {
  if ((h[offset]! & 0x80) !== 0) {
    if ((h[offset]! & 0x40) !== 0) throw new TarFormatError(`negative ${field}`);
    let value = h[offset]! & 0x3f;
    for (let i = 1; i < length; i++) {
      value = value * 256 + h[offset + i]!;
      if (!Number.isSafeInteger(value)) throw new TarFormatError(`${field} is too large`);
    }
    return value;
  }
  const text = cString(h, offset, length).trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`bad ${field} field '${text}'`);
  const value = Number.parseInt(text, 8);
  if (!Number.isSafeInteger(value)) throw new TarFormatError(`${field} is too large`);
  return value;
}

function verifyChecksum(h: Uint8Array): void {
  const stored = parseNumber(h, 148, 8, "checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  if (stored !== unsigned && stored !== signed) throw new TarFormatError("a header checksum does not match (not a tar archive, or corrupt)");
}

/** "LEN key=value\n" records. */
function parsePax(bytes: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  let at = 0;
  while (at < bytes.length) {
    let space = at;
    while (space < bytes.length && bytes[space] !== 0x20) space++;
    const length = Number.parseInt(utf8.decode(bytes.subarray(at, space)), 10);
    if (!Number.isInteger(length) || length <= 0 || at + length > bytes.length || space >= at + length) {
      throw new TarFormatError("a pax header record is malformed");
    }
    const record = utf8.decode(bytes.subarray(space + 1, at + length - 1)); // Drop the trailing "\n".
    const eq = record.indexOf("=");
    if (eq <= 0) throw new TarFormatError("a pax header record is malformed");
    out[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return out;
}
