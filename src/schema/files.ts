import { z } from "zod";
import { base64, fileMode, guestPath, sha256Hex } from "./common.ts";

const uploadId = z.string().min(1).max(64).describe("Id from upload_start");

const writeOptions = {
  mode: fileMode.optional().describe("Permission bits of a new file (default 0644); an overwritten file keeps its own"),
  create_dirs: z.boolean().default(false).describe("Create missing parent directories (0755)"),
  overwrite: z.boolean().default(true).describe("Replace an existing file; false refuses with -32001"),
};

export const FILE_METHODS = {
  copy_to_guest: {
    summary: "Write a whole file atomically (temp file in the same directory, fsync, rename) under allowed_file_paths.",
    params: z.strictObject({ path: guestPath, content_base64: base64, ...writeOptions }),
    result: z.strictObject({ path: z.string(), bytes: z.number().int(), sha256: sha256Hex }),
  },
  copy_from_guest: {
    summary: "Read a regular file (one with a single hard link), or a chunk of it, from under allowed_file_paths.",
    params: z.strictObject({
      path: guestPath,
      offset: z.number().int().min(0).default(0),
      length: z.number().int().min(1).optional().describe("Bytes to read (default and ceiling: [limits] copy_chunk_bytes)"),
    }),
    result: z.strictObject({
      content_base64: z.string(),
      bytes: z.number().int().describe("Bytes in this chunk"),
      sha256: sha256Hex.describe("SHA-256 of this chunk"),
      size: z.number().int().describe("Size of the whole file"),
      eof: z.boolean().describe("True when this chunk reaches the end of the file"),
    }),
  },
  upload_start: {
    summary: "Begin a chunked upload of a large file (or, with archive, of a .tar.gz for copy_archive_to_guest).",
    params: z.strictObject({
      path: guestPath.optional().describe("Destination file; omit with archive: true"),
      archive: z.boolean().default(false).describe("Stage the upload for copy_archive_to_guest instead of writing a file"),
      ...writeOptions,
    }),
    result: z.strictObject({ upload_id: uploadId, chunk_bytes: z.number().int().describe("Largest chunk upload_chunk accepts") }),
  },
  upload_chunk: {
    summary: "Append the next chunk of an upload; offset must equal the bytes received so far.",
    params: z.strictObject({ upload_id: uploadId, offset: z.number().int().min(0), content_base64: base64 }),
    result: z.strictObject({ upload_id: uploadId, received_bytes: z.number().int() }),
  },
  upload_commit: {
    summary: "Finish an upload: the whole-file SHA-256 must match, then the file replaces its destination atomically.",
    params: z.strictObject({ upload_id: uploadId, sha256: sha256Hex }),
    result: z.strictObject({ upload_id: uploadId, path: z.string().nullable(), bytes: z.number().int(), sha256: sha256Hex }),
  },
  upload_abort: {
    summary: "Drop an upload and its temp file.",
    params: z.strictObject({ upload_id: uploadId }),
    result: z.strictObject({ upload_id: uploadId, aborted: z.literal(true) }),
  },
  copy_archive_to_guest: {
    summary: "Unpack a .tar.gz into a directory under allowed_file_paths via a staging directory swapped in atomically; unsafe entries refuse the whole archive.",
    params: z.strictObject({
      dir: guestPath,
      archive_base64: base64.optional().describe("The whole .tar.gz; or"),
      upload_id: uploadId.optional().describe("A committed upload started with archive: true"),
    }),
    result: z.strictObject({
      dir: z.string(),
      files: z.number().int(),
      directories: z.number().int(),
      bytes: z.number().int().describe("Bytes of file content written"),
      replaced: z.boolean().describe("Whether an existing directory was replaced"),
    }),
  },
} as const;
