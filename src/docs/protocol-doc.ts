/**
 * docs/protocol.md, rendered from the method schemas and the error table.
 * `npm run docs` writes it; test/protocol-doc.test.ts fails when the file and
 * the schemas drift apart.
 */
import { z } from "zod";
import { APPLICATION_ERRORS, JSONRPC_ERRORS } from "../protocol/errors.ts";
import { DEFAULT_MAX_FRAME_BYTES } from "../protocol/framing.ts";
import { METHOD_NAMES, METHODS, NOTIFICATIONS, PROTOCOL_VERSION, type NotificationName } from "../schema/methods.ts";

const INTRO = `# kvm-manager-agent native protocol

> Generated from \`src/schema/methods.ts\` and \`src/protocol/errors.ts\` by \`npm run docs\`.
> Do not edit by hand: the test suite fails when this file and the schemas differ.

Protocol version: **${PROTOCOL_VERSION}**. Hosts detect features from \`get_info.methods\`
(every method with an \`enabled\` flag), not from version numbers.

## Transport and framing

The agent listens on the virtio-serial port \`org.kvmmanager.agent.0\`
(Linux: \`/dev/virtio-ports/org.kvmmanager.agent.0\`, Windows: \`\\\\.\\Global\\org.kvmmanager.agent.0\`);
or, in a VM without virtio-serial, on a serial line (\`isa-serial\`, e.g. \`/dev/ttyS1\`);
for tests and containers also on a unix socket, AF_VSOCK or stdin/stdout.
Every message in both directions is one frame:

| bytes | content |
|---|---|
| 0–3 | payload length, unsigned 32-bit big-endian |
| 4… | payload: one UTF-8 JSON-RPC 2.0 message (object or batch array) |

- Frames may be split across reads and several may arrive in one read.
- The payload limit is \`[limits] max_frame_bytes\` (default ${DEFAULT_MAX_FRAME_BYTES} bytes). A frame above it is answered
  with error ${APPLICATION_ERRORS.TOO_LARGE.code} (id \`null\`, \`data.limit\`, \`data.length\`) as soon as its header arrives;
  its payload is skipped as it streams in, never buffered, and the next frame is read normally.
- A zero-length frame, invalid UTF-8 or invalid JSON is answered with ${JSONRPC_ERRORS.PARSE_ERROR.code} (id \`null\`); the stream stays in sync.
- A reply larger than \`max_frame_bytes\` is replaced by error ${APPLICATION_ERRORS.TOO_LARGE.code} for the same id.
- On virtio-serial the agent resets its framing state when it sees the host disconnect. A serial line has no
  connect or disconnect: the guest never sees a host come or go, so there every host must start with the resync below.

### Resync

A guest does not always see a host disconnect: when a host drops its connection in the middle of a frame
and reconnects quickly, the agent may still hold the partial frame, and the port may still hold bytes of a
reply meant for the earlier host. A length prefix cannot recover from that by itself, so eight \`0xFF\` bytes
in a row — which UTF-8 JSON never contains — are reserved as the **sync marker**:

1. On connecting, the host sends the marker (and again with each retry while it waits for the agent:
   QEMU drops what a host writes while the guest has the port closed).
2. Wherever the marker appears in the stream — between frames, inside a header, inside a payload — the agent
   drops any partial frame, echoes the marker, and reads a fresh frame header right after it. Replies to
   requests that arrived before the marker are not sent. The run counts from its first \`0xFF\` (which may be a
   byte of a header, as in a length of \`0x0001FFFF\`), and a longer run is still one marker: further \`0xFF\`
   bytes after it are skipped, since no header starts with \`0xFF\` (\`max_frame_bytes\` is at most 1 GiB).
3. The host discards every byte it receives before the echoed marker.

Fewer than eight \`0xFF\` bytes are ordinary (invalid) payload bytes: such a frame gets ${JSONRPC_ERRORS.PARSE_ERROR.code} and the stream stays in sync.
The TypeScript client does all of this itself.

## JSON-RPC 2.0

- Requests carry \`"jsonrpc": "2.0"\`, a \`method\`, optional \`params\` (a JSON object: params are named) and an \`id\`
  (string, number or null). A message without \`id\` is a notification: it runs but is never answered, not even with an error.
- Batches (arrays) are answered with one array holding the replies of the requests in it, in any order;
  a batch of only notifications gets no reply; an empty batch is ${JSONRPC_ERRORS.INVALID_REQUEST.code}.
  A batch may hold at most \`[limits] max_batch_requests\` entries (default 1024).
- Requests run concurrently, at most \`[limits] max_in_flight\` per connection (default 64); replies may come in any order,
  matched by \`id\`. Past the limit the agent stops reading from the connection until calls finish.
- Params are validated against the schemas below: unknown fields are rejected, and ${JSONRPC_ERRORS.INVALID_PARAMS.code}
  names each bad field in \`message\` and lists them in \`data.issues\` (\`path\`, \`message\`).
- Every call is written to the audit log (time, transport, method, id, outcome, error code, duration); params and results never are.

### Message authentication (optional)

With \`[security] hmac_key_file\` set, the agent answers only requests signed with the key in that file
(its bytes, without a trailing newline; at least 16 bytes; the file must be root's with mode 0600 or the agent
does not start). Each request object, each entry of a batch included, carries one more member:

\`\`\`json
"auth": { "ts": 1795000000000, "nonce": "q3Jx0h5Tz9qE1Uo2mC7bWw", "mac": "<64 lowercase hex digits>" }
\`\`\`

- \`ts\`: the sender's clock, in milliseconds since the epoch; it must be within \`[security] hmac_window_seconds\`
  (default 120) of the guest's clock, either way.
- \`nonce\`: 16 to 64 characters of \`[A-Za-z0-9_-]\`, never used before within the window (the agent remembers each one
  until its \`ts\` leaves the window).
- \`mac\`: HMAC-SHA256 with the key over the UTF-8 bytes of
  \`"kma-hmac-v1\\n" + ts + "\\n" + nonce + "\\n" + canonical\`, where \`canonical\` is the request without its \`auth\`
  member as JSON with the members of every object sorted by key (UTF-16 code units) and no whitespace — numbers and
  strings as ECMAScript's \`JSON.stringify\` writes them (RFC 8785's form). The agent recomputes it and compares in
  constant time.

A request that is unsigned, malformed, wrongly signed, outside the window or replayed gets ${APPLICATION_ERRORS.UNAUTHENTICATED.code} with
\`data.reason\` \`missing\`, \`malformed\`, \`bad_mac\`, \`stale\`, \`replayed\` or \`busy\` (more than a million nonces
within one window), and is audited like any other call. The TypeScript client signs when given the key
(\`AgentClient.connect(target, { hmacKey })\`, \`--hmac-key-file\` on the CLI). Replies are not signed: the host
trusts the channel it reads from. The QGA port cannot be signed (qemu's protocol has no place for it); turn
\`[qga]\` off where every caller must prove the key.
`;

function errorTable(): string {
  const rows = (table: Record<string, { code: number; meaning: string }>) =>
    Object.entries(table)
      .map(([name, { code, meaning }]) => `| ${code} | \`${name}\` | ${meaning} |`)
      .join("\n");
  return `## Errors

Standard JSON-RPC 2.0 errors:

| code | name | meaning |
|---|---|---|
${rows(JSONRPC_ERRORS)}

Application errors (-32000 to -32099):

| code | name | meaning |
|---|---|---|
${rows(APPLICATION_ERRORS)}
`;
}

function jsonSchema(schema: z.ZodType): string {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
  return "```json\n" + JSON.stringify(rest, null, 2) + "\n```";
}

function methodSection(name: (typeof METHOD_NAMES)[number]): string {
  const def = METHODS[name];
  return `### \`${name}\`

${def.summary}

Params:

${jsonSchema(def.params)}

Result:

${jsonSchema(def.result)}
`;
}

function notificationSection(name: NotificationName): string {
  const def = NOTIFICATIONS[name];
  return `### \`${name}\`

${def.summary}

Params:

${jsonSchema(def.params)}
`;
}

export function renderProtocolDoc(): string {
  return `${INTRO}
${errorTable()}
## Methods

${METHOD_NAMES.map(methodSection).join("\n")}
## Notifications (agent to host)

JSON-RPC notifications the agent sends on the connection of the call that asked for them (no \`id\`, never answered).

${(Object.keys(NOTIFICATIONS) as NotificationName[]).map(notificationSection).join("\n")}`;
}
