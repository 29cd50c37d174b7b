import type { AgentConfig } from "./config/schema.ts";
import { ExecManager } from "./exec/exec-service.ts";
import { FsFreeze } from "./fsfreeze/fsfreeze.ts";
import { CallTracker } from "./runtime/calls.ts";
import { linuxFreezeOps } from "./fsfreeze/linux.ts";
import { FileManager } from "./files/file-service.ts";
import { LinuxGuest } from "./guest/guest-service.ts";
import type { AuditLog } from "./log/audit.ts";
import type { Logger } from "./log/logger.ts";
import { ProcMetrics } from "./metrics/metrics.ts";
import { PowerController } from "./power/power.ts";
import type { Services } from "./services.ts";
import { UtmpUsers } from "./users/users.ts";

export function createServices(config: AgentConfig, logger: Logger, audit: AuditLog): Services {
  return {
    exec: new ExecManager(config, logger),
    files: new FileManager(config, logger),
    metrics: new ProcMetrics(),
    users: new UtmpUsers(),
    power: new PowerController(logger, audit),
    calls: new CallTracker(),
    fsfreeze: new FsFreeze(config.qga.state_dir, config.fsfreeze.hook || undefined, linuxFreezeOps, logger),
    guest: new LinuxGuest({ logger, audit }),
  };
}
