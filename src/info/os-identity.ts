/** What each platform layer reports about the operating system itself. */
export interface OsIdentity {
  os_type: "linux" | "windows";
  os_id: string;
  os_name: string;
  os_version: string;
  os_pretty_name: string;
  kernel_release: string;
  kernel_version: string;
  arch: string;
}
