import { expect, test } from "bun:test";
import { IdleGc } from "../src/runtime/idle-gc.ts";

test("one collection in the first quiet second after traffic; none while traffic goes on, none when idle throughout", () => {
  let collections = 0;
  const gc = new IdleGc(() => collections++, 60_000);
  gc.tick();
  expect(collections).toBe(0); // never any traffic
  gc.noteActivity();
  gc.tick(); // a busy second
  gc.noteActivity();
  gc.tick(); // still busy
  expect(collections).toBe(0);
  gc.tick(); // the first quiet second
  expect(collections).toBe(1);
  gc.tick();
  gc.tick();
  expect(collections).toBe(1); // quiet on: nothing more owed
});
