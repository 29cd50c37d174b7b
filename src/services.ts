/**
 * What the dispatcher calls for each area, and the context a call runs in.
 * Each area lives in its own folder; the dispatcher's switch is the only place
 * that maps method names to these calls.
 */
import type { FsFreeze } from "./fsfreeze/fsfreeze.ts";
import type { Base64Bytes } from "./protocol/base64.ts";
import type { CallTracker } from "./runtime/calls.ts";
import type { NotificationName, NotificationParams, Params, Result } from "./schema/methods.ts";

type Answer<T> = T | Promise<T>;

export interface CallContext {
  /** For logs and audit. */
  transport: string;
  /** Push a notification to the connection that made the call; dropped once that connection is gone. */
  notify<N extends NotificationName>(method: N, params: NotificationParams<N>): void;
}

export interface ExecService {
  run(params: Params<"exec">): Answer<Result<"exec">>;
  start(params: Params<"exec_start">, context: CallContext): Answer<Result<"exec_start">>;
  status(params: Params<"exec_status">): Answer<Result<"exec_status">>;
  kill(params: Params<"exec_kill">): Answer<Result<"exec_kill">>;
  /** The agent is stopping: no child outlives it. */
  killAll(): void;
}

/**
 * copy_from_guest's result with its content still bytes: JSON gives the wire
 * form (a base64 string); the reply encoder writes it into the frame directly.
 */
export type FileChunk = Omit<Result<"copy_from_guest">, "content_base64"> & { content_base64: Base64Bytes };

export interface FileService {
  copyTo(params: Params<"copy_to_guest">): Answer<Result<"copy_to_guest">>;
  copyFrom(params: Params<"copy_from_guest">): Answer<FileChunk>;
  uploadStart(params: Params<"upload_start">): Answer<Result<"upload_start">>;
  uploadChunk(params: Params<"upload_chunk">): Answer<Result<"upload_chunk">>;
  uploadCommit(params: Params<"upload_commit">): Answer<Result<"upload_commit">>;
  uploadAbort(params: Params<"upload_abort">): Answer<Result<"upload_abort">>;
  unpackArchive(params: Params<"copy_archive_to_guest">): Answer<Result<"copy_archive_to_guest">>;
  /** The agent is stopping: open uploads are dropped with their temp files. */
  close(): void;
}

export interface MetricsService {
  collect(params: Params<"get_metrics">): Answer<Result<"get_metrics">>;
}

export interface UsersService {
  list(): Answer<Result<"get_users">>;
  /** guest-get-users: one entry per user, earliest login (qemu-ga's view of the same utmp; on Windows with the domain, as qemu-ga's). */
  qgaUsers(): { user: string; "login-time": number; domain?: string }[];
}

export interface PowerService {
  request(action: "poweroff" | "reboot" | "halt", params: Params<"shutdown">): Answer<Result<"shutdown">>;
}

/** The guest's clock, hardware, disks, routes, sleep and accounts (src/guest), shaped for the native protocol. */
export interface GuestService {
  getTime(): Result<"get_time">;
  setTime(params: Params<"set_time">): Promise<Result<"set_time">>;
  getTimezone(): Result<"get_timezone">;
  getOsInfo(): Result<"get_os_info">;
  getVcpus(): Result<"get_vcpus">;
  setVcpus(params: Params<"set_vcpus">): Result<"set_vcpus">;
  getNetworkInterfaces(): Result<"get_network_interfaces">;
  getNetworkRoutes(): Result<"get_network_routes">;
  getFsinfo(): Result<"get_fsinfo">;
  getDisks(): Result<"get_disks">;
  getDiskstats(): Result<"get_diskstats">;
  getMemoryBlocks(): Result<"get_memory_blocks">;
  getMemoryBlockInfo(): Result<"get_memory_block_info">;
  setMemoryBlocks(params: Params<"set_memory_blocks">): Result<"set_memory_blocks">;
  fstrim(params: Params<"fstrim">): Promise<Result<"fstrim">>;
  /** Replies before the guest suspends. */
  suspend(params: Params<"suspend">): Promise<Result<"suspend">>;
  setUserPassword(params: Params<"set_user_password">): Promise<Result<"set_user_password">>;
  sshGetAuthorizedKeys(params: Params<"ssh_get_authorized_keys">): Result<"ssh_get_authorized_keys">;
  sshAddAuthorizedKeys(params: Params<"ssh_add_authorized_keys">): Result<"ssh_add_authorized_keys">;
  sshRemoveAuthorizedKeys(params: Params<"ssh_remove_authorized_keys">): Result<"ssh_remove_authorized_keys">;
}

export interface Services {
  exec: ExecService;
  files: FileService;
  metrics: MetricsService;
  users: UsersService;
  power: PowerService;
  guest: GuestService;
  /** Shared by both protocols: a freeze asked for on one port gates the other. */
  fsfreeze: FsFreeze;
  /** The calls running on both protocols, for a graceful stop. */
  calls: CallTracker;
}
