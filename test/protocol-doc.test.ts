import { expect, test } from "bun:test";
import { join } from "node:path";
import { z } from "zod";
import { renderProtocolDoc } from "../src/docs/protocol-doc.ts";
import { APPLICATION_ERRORS, JSONRPC_ERRORS } from "../src/protocol/errors.ts";
import { METHOD_NAMES, METHODS, NOTIFICATIONS } from "../src/schema/methods.ts";
import { QGA_COMMAND_NAMES } from "../src/qga/schema.ts";

test("docs/protocol.md is what the schemas generate (run `npm run docs` after changing a schema)", async () => {
  const onDisk = await Bun.file(join(import.meta.dir, "../docs/protocol.md")).text();
  expect(onDisk).toBe(renderProtocolDoc());
});

/** An object schema, or a union of object schemas (get_metrics answers in one of two shapes). */
function isObjectSchema(schema: Record<string, unknown>): boolean {
  const variants = (schema.oneOf ?? schema.anyOf) as Record<string, unknown>[] | undefined;
  return variants ? variants.every(isObjectSchema) : schema.type === "object";
}

test("every method and notification has a summary and JSON-Schema-representable object params and result", () => {
  for (const name of METHOD_NAMES) {
    expect(METHODS[name].summary.length).toBeGreaterThan(10);
    expect(isObjectSchema(z.toJSONSchema(METHODS[name].params, { io: "input" }) as Record<string, unknown>)).toBe(true);
    expect(isObjectSchema(z.toJSONSchema(METHODS[name].result) as Record<string, unknown>)).toBe(true);
  }
  for (const def of Object.values(NOTIFICATIONS)) {
    expect(def.summary.length).toBeGreaterThan(10);
    expect(isObjectSchema(z.toJSONSchema(def.params) as Record<string, unknown>)).toBe(true);
  }
});

test("every method and every error code appears in the doc", () => {
  const doc = renderProtocolDoc();
  for (const name of [...METHOD_NAMES, ...Object.keys(NOTIFICATIONS)]) expect(doc).toContain(`### \`${name}\``);
  for (const { code } of [...Object.values(JSONRPC_ERRORS), ...Object.values(APPLICATION_ERRORS)]) expect(doc).toContain(`| ${code} |`);
});

test("application error codes stay inside -32000..-32099 and are unique", () => {
  const codes = Object.values(APPLICATION_ERRORS).map((e) => e.code);
  expect(new Set(codes).size).toBe(codes.length);
  for (const code of codes) expect(code <= -32000 && code >= -32099).toBe(true);
});

test("the README lists every QGA command the agent serves, and no other", async () => {
  const readme = await Bun.file(join(import.meta.dir, "../README.md")).text();
  const served = readme.slice(readme.indexOf("Served so far:"), readme.indexOf("Other commands answer"));
  const listed = [...served.matchAll(/`(guest-[a-z-]+)`/g)].map((match) => match[1]);
  expect(listed.sort()).toEqual([...QGA_COMMAND_NAMES].sort());
});

test("no two errors share a code", () => {
  const codes = [...Object.values(JSONRPC_ERRORS), ...Object.values(APPLICATION_ERRORS)].map((error) => error.code);
  expect(new Set(codes).size).toBe(codes.length);
});
