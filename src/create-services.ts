import type { AgentConfig } from "./config/schema.ts";
import { ExecManager } from "./exec/exec-service.ts";
import { windowsExecDeps } from "./exec/windows.ts";
import { FsFreeze } from "./fsfreeze/fsfreeze.ts";
import { CallTracker } from "./runtime/calls.ts";
import { linuxFreezeOps } from "./fsfreeze/linux.ts";
import { FileManager } from "./files/file-service.ts";
import { WindowsFileManager } from "./files/windows.ts";
import { LinuxGuest } from "./guest/guest-service.ts";
import type { AuditLog } from "./log/audit.ts";
import type { Logger } from "./log/logger.ts";
import { ProcMetrics } from "./metrics/metrics.ts";
import { WindowsMetrics } from "./metrics/windows.ts";
import { PowerController } from "./power/power.ts";
import { windowsPowerOptions } from "./power/windows.ts";
import type { Services } from "./services.ts";
import { UtmpUsers } from "./users/users.ts";
import { WindowsUsers } from "./users/windows.ts";

export function createServices(config: AgentConfig, logger: Logger, audit: AuditLog): Services {
  const windows = process.platform === "win32";
  return {
    exec: new ExecManager(config, logger, windows ? windowsExecDeps() : {}),
    files: windows ? new WindowsFileManager(config, logger) : new FileManager(config, logger),
    metrics: windows ? new WindowsMetrics() : new ProcMetrics(),
    users: windows ? new WindowsUsers() : new UtmpUsers(),
    power: new PowerController(logger, audit, windows ? windowsPowerOptions() : {}),
    calls: new CallTracker(),
    fsfreeze: new FsFreeze(config.qga.state_dir, config.fsfreeze.hook || undefined, linuxFreezeOps, logger),
    guest: new LinuxGuest({ logger, audit }),
  };
}
