import os from "node:os";
import type { OsIdentity } from "./os-identity.ts";

/** os.version() is the product name (RtlGetVersion + registry); os.release() the NT build. */
export function windowsOsIdentity(): OsIdentity {
  const productName = os.version();
  const build = os.release();
  return {
    os_type: "windows",
    os_id: "windows",
    os_name: productName,
    os_version: build,
    os_pretty_name: `${productName} (${build})`,
    kernel_release: build,
    kernel_version: productName,
    arch: os.machine(),
  };
}
