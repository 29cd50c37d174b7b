/** `--service`, `--install-service`, `--uninstall-service`: the Windows service's side of the command line. */
import { appendFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { startAgent } from "../agent.ts";
import { applyArgs, UsageError, type AgentArgs } from "../cli/agent-args.ts";
import { loadConfig } from "../config/load.ts";
import { DEFAULT_CONFIG_PATH } from "../config/schema.ts";
import { createLogger } from "../log/logger.ts";
import { SERVICE_DISPLAY_NAME, scmInstaller, serviceSpec, type ServiceInstaller } from "./install.ts";
import { Win32Error } from "./advapi32.ts";
import { runService, scmApi, SERVICE_NAME, type ServiceControlManager } from "./windows-service.ts";

const WIN32_HINTS: Record<number, string> = {
  5: " (access denied: run it as an administrator)",
  1060: " (the service is not installed)",
  1073: " (the service is installed already: --uninstall-service first)",
};

/** A service has no console: its log goes to this file beside the config (the audit goes to its own file and the Event Log). */
export const SERVICE_LOG_NAME = "agent.log";

export async function runWindowsServiceCommand(
  args: AgentArgs,
  { platform = process.platform, installer = scmInstaller, scm = scmApi() as ServiceControlManager, exePath = process.execPath } = {},
): Promise<number> {
  if ([args.service, args.installService, args.uninstallService].filter(Boolean).length > 1) {
    throw new UsageError("--service, --install-service and --uninstall-service go one at a time");
  }
  if (platform !== "win32") throw new UsageError("--service, --install-service and --uninstall-service are for Windows");
  if (args.installService || args.uninstallService) {
    try {
      if (args.installService) {
        installer.create(serviceSpec(exePath, args.configPath));
        console.log(`installed the service ${SERVICE_NAME} (${SERVICE_DISPLAY_NAME}): auto start, LocalSystem; start it with: sc start ${SERVICE_NAME}`);
      } else {
        installer.remove(SERVICE_NAME);
        console.log(`removed the service ${SERVICE_NAME}`);
      }
    } catch (error) {
      if (!(error instanceof Win32Error)) throw error;
      // 5: not an administrator; 1073: installed already; 1060: not installed.
      console.error(`kvm-manager-agent: ${error.message}${WIN32_HINTS[error.code] ?? ""}`);
      return 1;
    }
    return 0;
  }
  const configPath = args.configPath ?? DEFAULT_CONFIG_PATH;
  const logPath = join(dirname(configPath), SERVICE_LOG_NAME);
  mkdirSync(dirname(logPath), { recursive: true });
  const write = (line: string) => {
    try {
      appendFileSync(logPath, line);
    } catch {
      // A full disk must not stop the service; the audit has its own sinks.
    }
  };
  // Until the config is read (and if it cannot be), the log takes the command line's level.
  let logger = createLogger(args.logLevel ?? "info", "json", write);
  let graceSeconds = 10;
  const exitCode = await runService(
    scm,
    async () => {
      const config = applyArgs(await loadConfig(configPath, { required: args.configPath !== undefined }), args);
      graceSeconds = config.limits.stop_grace_seconds;
      logger = createLogger(config.logging.level, config.logging.format, write);
      return startAgent(config, logger);
    },
    logger,
    () => graceSeconds,
  );
  logger.info("service stopped", { exit_code: exitCode });
  // The SCM has let the process go: nothing is left to finish.
  process.exit(exitCode);
}
