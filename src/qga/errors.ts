/** qemu-ga's error classes; every other failure is a GenericError with a human desc. */
export type QgaErrorClass = "GenericError" | "CommandNotFound";

export class QgaError extends Error {
  constructor(
    readonly errorClass: QgaErrorClass,
    readonly desc: string,
  ) {
    super(desc);
    this.name = "QgaError";
  }
}

export const genericError = (desc: string) => new QgaError("GenericError", desc);
