/**
 * QGA commands with qemu-ga's exact argument and return names and types (as
 * qga/qapi-schema.json defines them): the single source the QGA dispatcher
 * validates with and guest-info lists. More commands join as they are built.
 */
import { z } from "zod";

/** qapi "int": a JSON integer. */
const int = z.number().int();

export const QGA_COMMANDS = {
  "guest-sync-delimited": {
    args: z.strictObject({ id: int }),
    returns: int,
    successResponse: true,
  },
  "guest-sync": {
    args: z.strictObject({ id: int }),
    returns: int,
    successResponse: true,
  },
  "guest-ping": {
    args: z.strictObject({}),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-info": {
    args: z.strictObject({}),
    returns: z.strictObject({
      version: z.string(),
      supported_commands: z.array(z.strictObject({ enabled: z.boolean(), name: z.string(), "success-response": z.boolean() })),
    }),
    successResponse: true,
  },
} as const;

export type QgaCommandName = keyof typeof QGA_COMMANDS;
export const QGA_COMMAND_NAMES = Object.keys(QGA_COMMANDS) as QgaCommandName[];

export function isQgaCommand(name: string): name is QgaCommandName {
  return Object.hasOwn(QGA_COMMANDS, name);
}

/** qemu's type name in "Invalid parameter type for 'x', expected: <type>" (every numeric argument so far is a qapi int). */
export function qapiTypeName(zodExpected: string): string {
  return zodExpected === "number" ? "integer" : zodExpected;
}
