/*
 * TEST ONLY, never shipped: Wine 8.0 lacks bcryptprimitives.dll's ProcessPrng,
 * which Bun's Windows runtime imports, so under Wine the exe exits 53 before
 * running anything. This stand-in, placed next to the exe, fills the buffer
 * from advapi32's RtlGenRandom (SystemFunction036), which Wine has.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
    if (!SystemFunction036(data, chunk)) return FALSE;
    data += chunk;
    length -= chunk;
  }
  return TRUE;
}
