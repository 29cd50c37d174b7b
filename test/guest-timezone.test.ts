import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { guestTimezone, posixZone } from "../src/guest/timezone.ts";

const SUMMER = Date.UTC(2026, 6, 15, 12) / 1000;
const WINTER = Date.UTC(2026, 10, 21, 12) / 1000;

describe.skipIf(!existsSync("/usr/share/zoneinfo/Europe/Berlin"))("zones from tzdata files", () => {
  const cases: [string, [string, number], [string, number]][] = [
    ["Europe/Berlin", ["CEST", 7200], ["CET", 3600]],
    ["America/New_York", ["EDT", -14400], ["EST", -18000]],
    ["Australia/Sydney", ["AEST", 36000], ["AEDT", 39600]], // southern hemisphere: DST spans the new year
    ["Asia/Kolkata", ["IST", 19800], ["IST", 19800]],
    ["UTC", ["UTC", 0], ["UTC", 0]],
  ];
  for (const [tz, [summerZone, summerOffset], [winterZone, winterOffset]] of cases) {
    test(`${tz}: ${summerZone} in July, ${winterZone} in November`, () => {
      expect(guestTimezone({ TZ: tz }, SUMMER)).toEqual({ zone: summerZone, offset: summerOffset });
      expect(guestTimezone({ TZ: `:${tz}` }, WINTER)).toEqual({ zone: winterZone, offset: winterOffset });
    });
  }
});

describe("POSIX TZ strings", () => {
  test("std and dst names, offsets west of UTC, M rules with times", () => {
    expect(posixZone("CET-1CEST,M3.5.0,M10.5.0/3", SUMMER)).toEqual({ zone: "CEST", offset: 7200 });
    expect(posixZone("CET-1CEST,M3.5.0,M10.5.0/3", WINTER)).toEqual({ zone: "CET", offset: 3600 });
    // The switch: last Sunday of March 2026 is the 29th, at 02:00 local (01:00 UTC).
    expect(posixZone("CET-1CEST,M3.5.0,M10.5.0/3", Date.UTC(2026, 2, 29, 0, 59) / 1000)!.zone).toBe("CET");
    expect(posixZone("CET-1CEST,M3.5.0,M10.5.0/3", Date.UTC(2026, 2, 29, 1, 0) / 1000)!.zone).toBe("CEST");
  });

  test("quoted names, no DST, and nonsense", () => {
    expect(posixZone("<+0530>-5:30", WINTER)).toEqual({ zone: "+0530", offset: 19800 });
    expect(posixZone("JST-9", SUMMER)).toEqual({ zone: "JST", offset: 32400 });
    expect(posixZone("not a zone", SUMMER)).toBeUndefined();
    expect(guestTimezone({ TZ: "Nope/Nowhere" }, SUMMER)).toEqual({ zone: "UTC", offset: 0 });
    expect(guestTimezone({ TZ: "../../etc/passwd" }, SUMMER)).toEqual({ zone: "UTC", offset: 0 });
  });
});
