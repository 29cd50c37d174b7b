/**
 * The agent's frame parser hands a long string at a key ending in "_base64" over already decoded
 * (parse-frame.ts), so that name must mean the base64 schema: every params field named so uses it, and it is
 * used under no other name.
 */
import { expect, test } from "bun:test";
import type { z } from "zod";
import { base64 } from "../src/schema/common.ts";
import { METHOD_NAMES, METHODS } from "../src/schema/methods.ts";

/** The schema inside optional() and default() wrappers. */
function unwrap(schema: z.ZodType): z.ZodType {
  const def = schema._zod.def as { type: string; innerType?: z.ZodType };
  return (def.type === "optional" || def.type === "default") && def.innerType ? unwrap(def.innerType) : schema;
}

test("a params field is named *_base64 exactly when it is the base64 schema", () => {
  const fields: string[] = [];
  for (const name of METHOD_NAMES) {
    const shape = (METHODS[name].params as unknown as { shape?: Record<string, z.ZodType> }).shape;
    expect(shape).toBeDefined();
    for (const [key, schema] of Object.entries(shape!)) {
      const isBase64 = unwrap(schema) === (base64 as z.ZodType);
      expect({ field: `${name}.${key}`, isBase64 }).toEqual({ field: `${name}.${key}`, isBase64: key.endsWith("_base64") });
      if (isBase64) fields.push(`${name}.${key}`);
    }
  }
  // The check above must have seen the fields the parser decodes.
  expect(fields).toContain("upload_chunk.content_base64");
  expect(fields).toContain("copy_to_guest.content_base64");
});
