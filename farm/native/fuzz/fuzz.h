/* What the fuzz targets share (docs/native-board.md, "Fuzzing"): each target is one file with
 * LLVMFuzzerTestOneInput, linked with the daemon's own sources (all but main.c) and common.c. */
#ifndef FARM_FUZZ_H
#define FARM_FUZZ_H

#include "../calls.h"

#include <stddef.h>
#include <stdint.h>

/* The farm secret the proof target holds, and the acceptor's nonce it uses (seeds are made with both). */
#define FUZZ_SECRET "fuzzing-secret-of-the-farm-0123456789"
#define FUZZ_NONCE_BYTE 0x5A
/* The largest payload a fuzzed session accepts (the daemon's --max-message-size). */
#define FUZZ_MAX_MESSAGE (64u << 20)

/* Ids of what every fuzzed session holds: two functions (one with a signature) and two arrays. */
enum { FUZZ_TYPED_FUNCTION = 1, FUZZ_UNTYPED_FUNCTION, FUZZ_FLOAT_ARRAY, FUZZ_INT_ARRAY };
#define FUZZ_SIGNATURE "int f(float *a, int32_t n, double x, uint8_t flag, const void *any)"

/* A session as the session process holds one after a few requests, without a connection; fresh per input. */
Session *fuzz_session(void);
void fuzz_session_free(Session *s);

#endif
