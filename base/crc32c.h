/* CRC32C (Castagnoli), the checksum of every WAL record, frame and snapshot.
 * Uses the SSE4.2 crc32 instruction when the CPU has it, else a
 * slicing-by-8 table; both give identical results (tested). */
#ifndef PAXFS_BASE_CRC32C_H
#define PAXFS_BASE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes. crc32c(0, "123456789", 9) == 0xe3069283. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);
/* The portable path alone, for testing the hardware path against. */
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len);

#endif
