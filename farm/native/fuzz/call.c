/* A CALL's payload (prepare_call): function id, argument tags and values, checked against a signature. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *payload = malloc(size ? size : 1);
    Prepared *call = xmalloc(sizeof(Prepared));
    if (!payload) abort();
    memcpy(payload, data, size);
    Session *s = fuzz_session();
    prepare_call(s, payload, size, call);
    fuzz_session_free(s);
    free(call);
    free(payload);
    return 0;
}
