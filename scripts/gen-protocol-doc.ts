/** Writes docs/protocol.md from the schemas (see src/docs/protocol-doc.ts). */
import { join } from "node:path";
import { renderProtocolDoc } from "../src/docs/protocol-doc.ts";

const out = join(import.meta.dir, "..", "docs", "protocol.md");
await Bun.write(out, renderProtocolDoc());
console.log(`wrote ${out}`);
