/* TVM's hello as the daemon receives it (hello_parse), and its key text behind a well-formed prefix (key_parse). */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static Hello hello;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char why[8400];
    size_t used = 0;
    unsigned char *copy = malloc(size ? size : 1);
    if (!copy) abort();
    memcpy(copy, data, size);
    hello_parse(copy, size, &hello, &used, why, sizeof why);
    free(copy);
    if (size > MAX_KEY_LENGTH) return 0;
    unsigned char *framed = malloc(8 + size);
    if (!framed) abort();
    put_u32(framed, RPC_MAGIC);
    put_u32(framed + 4, (uint32_t)size);
    memcpy(framed + 8, data, size);
    hello_parse(framed, 8 + size, &hello, &used, why, sizeof why);
    free(framed);
    return 0;
}
