/**
 * guest-get-timezone as glib answers it for qemu-ga: the local zone (TZ, else
 * /etc/localtime, else UTC) at this instant — its abbreviation and its offset
 * east of UTC in seconds. Read from the TZif file (RFC 8536): the last
 * transition before now, or, past the last transition, the POSIX TZ rule in
 * the file's footer (which is all "slim" tzdata files have for current DST).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface ZoneNow {
  zone: string;
  offset: number;
}

const ZONEINFO = "/usr/share/zoneinfo";
const UTC: ZoneNow = { zone: "UTC", offset: 0 };

export function guestTimezone(env: Record<string, string | undefined> = process.env, now = Date.now() / 1000): ZoneNow {
  const tz = env.TZ?.replace(/^:/, "");
  if (tz === undefined) return existsSync("/etc/localtime") ? zoneFromFile("/etc/localtime", now) ?? UTC : UTC;
  const file = tz.startsWith("/") ? tz : join(ZONEINFO, tz);
  if (tz !== "" && !tz.includes("..") && existsSync(file)) return zoneFromFile(file, now) ?? UTC;
  return posixZone(tz, now) ?? UTC;
}

/** A TZif file's local time type at `now`. */
export function zoneFromFile(path: string, now: number): ZoneNow | undefined {
  const bytes = readFileSync(path);
  if (bytes.toString("latin1", 0, 4) !== "TZif") return undefined;
  const version = bytes[4]!;
  const counts = (at: number) => [20, 24, 28, 32, 36, 40].map((o) => bytes.readUInt32BE(at + o)) as [number, number, number, number, number, number];
  let [isut, isstd, leap, timecnt, typecnt, charcnt] = counts(0);
  let at = 44;
  let timeSize = 4;
  if (version >= 0x32) {
    // Skip the 32-bit block; the 64-bit one follows with its own header.
    at += timecnt * 4 + timecnt + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
    [isut, isstd, leap, timecnt, typecnt, charcnt] = counts(at);
    at += 44;
    timeSize = 8;
  }
  const times = Array.from({ length: timecnt }, (_, i) => (timeSize === 8 ? Number(bytes.readBigInt64BE(at + i * 8)) : bytes.readInt32BE(at + i * 4)));
  const indexes = bytes.subarray(at + timecnt * timeSize, at + timecnt * timeSize + timecnt);
  const typesAt = at + timecnt * timeSize + timecnt;
  const charsAt = typesAt + typecnt * 6;
  const type = (index: number): ZoneNow => {
    const offset = bytes.readInt32BE(typesAt + index * 6);
    const abbr = bytes[typesAt + index * 6 + 5]!;
    const end = bytes.indexOf(0, charsAt + abbr);
    return { zone: bytes.toString("latin1", charsAt + abbr, end), offset };
  };
  let last = -1;
  for (let i = 0; i < timecnt && times[i]! <= now; i++) last = i;
  if (timeSize === 8 && (timecnt === 0 || last === timecnt - 1)) {
    const footerAt = charsAt + charcnt + leap * 12 + isstd + isut;
    const footer = bytes.toString("latin1", footerAt).split("\n")[1];
    const rule = footer ? posixZone(footer, now) : undefined;
    if (rule) return rule;
  }
  return typecnt === 0 ? undefined : type(last >= 0 ? indexes[last]! : 0);
}

/** A POSIX TZ string (std offset [dst [offset] [,start[/time],end[/time]]]) at `now`. */
export function posixZone(spec: string, now: number): ZoneNow | undefined {
  const match = /^(<[^>]+>|[A-Za-z]{3,})([-+]?\d{1,2}(?::\d{2}){0,2})(?:(<[^>]+>|[A-Za-z]{3,})([-+]?\d{1,2}(?::\d{2}){0,2})?(?:,([^,]+),([^,]+))?)?$/.exec(spec);
  if (!match) return undefined;
  const name = (text: string) => text.replace(/^<|>$/g, "");
  // POSIX offsets are west of UTC: "CET-1" is one hour east.
  const stdOffset = east(match[2]!);
  const std: ZoneNow = { zone: name(match[1]!), offset: stdOffset };
  if (!match[3]) return std;
  const dst: ZoneNow = { zone: name(match[3]), offset: match[4] ? east(match[4]) : stdOffset + 3600 };
  if (!match[5] || !match[6]) return std;
  const year = new Date((now + stdOffset) * 1000).getUTCFullYear();
  // Transition instants in UTC: the start is given in standard time, the end in daylight time.
  const start = ruleDay(match[5], year) - stdOffset;
  const end = ruleDay(match[6], year) - dst.offset;
  const inDst = start < end ? now >= start && now < end : !(now >= end && now < start);
  return inDst ? dst : std;
}

/** A POSIX (west-positive) offset as seconds east of UTC, never -0. */
function east(text: string): number {
  return 0 - seconds(text) || 0;
}

function seconds(text: string): number {
  const sign = text.startsWith("-") ? -1 : 1;
  const [h = 0, m = 0, s = 0] = text.replace(/^[-+]/, "").split(":").map(Number);
  return sign * (h * 3600 + m * 60 + s);
}

/** A rule date ("Mm.w.d[/time]", "Jn[/time]", "n[/time]") in `year`, as seconds since the epoch of local wall time. */
function ruleDay(rule: string, year: number): number {
  const [date, time] = rule.split("/") as [string, string | undefined];
  const at = time === undefined ? 7200 : seconds(time);
  const dayStart = (month: number, day: number) => Date.UTC(year, month, day) / 1000;
  let midnight: number;
  const m = /^M(\d+)\.(\d)\.(\d)$/.exec(date);
  if (m) {
    const month = Number(m[1]) - 1;
    const week = Number(m[2]);
    const weekday = Number(m[3]);
    const firstWeekday = new Date(Date.UTC(year, month, 1)).getUTCDay();
    let day = 1 + ((weekday - firstWeekday + 7) % 7) + (week - 1) * 7;
    const daysInMonth = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
    while (day > daysInMonth) day -= 7; // week 5 means the last such weekday
    midnight = dayStart(month, day);
  } else if (date.startsWith("J")) {
    // Julian day 1..365, February 29 never counted.
    const n = Number(date.slice(1));
    const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
    midnight = dayStart(0, 1) + (n - 1 + (leap && n >= 60 ? 1 : 0)) * 86400;
  } else {
    midnight = dayStart(0, 1) + Number(date) * 86400;
  }
  return midnight + at;
}
