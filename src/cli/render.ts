/** Human output for the host CLI: an indented key/value rendering of any JSON result. */
export function renderHuman(value: unknown, indent = ""): string {
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return value
      .map((item) => {
        const body = renderHuman(item, `${indent}  `);
        return isScalar(item) ? `${indent}- ${body}` : `${indent}- ${body.trimStart()}`;
      })
      .join("\n");
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    return entries
      .map(([key, item]) => (isScalar(item) || isEmpty(item) ? `${indent}${key}: ${renderHuman(item)}` : `${indent}${key}:\n${renderHuman(item, `${indent}  `)}`))
      .join("\n");
  }
  return typeof value === "string" ? value : JSON.stringify(value);
}

function isScalar(value: unknown): boolean {
  return value === null || typeof value !== "object";
}

function isEmpty(value: unknown): boolean {
  return Array.isArray(value) ? value.length === 0 : Object.keys(value as object).length === 0;
}
