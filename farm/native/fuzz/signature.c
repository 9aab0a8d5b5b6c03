/* GET_FUNCTION's C-like signature text (parse_signature), as the session reads it from the metadata. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1); /* JSON strings reach it NUL-terminated */
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = 0;
    Session *s = fuzz_session();
    free_signature(parse_signature(s, text, size));
    fuzz_session_free(s);
    free(text);
    return 0;
}
