/* The bounded JSON reader (json_parse) on any bytes, and what the daemon asks of what it read. */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static void walk(const JValue *v) {
    json_type_name(v);
    if (v->type == J_ARRAY)
        for (size_t k = 0; k < v->len; k++) walk(&v->items[k]);
    if (v->type == J_OBJECT) {
        for (size_t k = 0; k < v->len; k++) walk(&v->members[k].value);
        json_get(v, "name");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size ? size : 1);
    if (!text) abort();
    memcpy(text, data, size);
    Arena *arena = arena_new();
    char why[300];
    const JValue *value = json_parse(text, size, arena, why, sizeof why);
    if (value) {
        walk(value);
        if (value->type == J_STRING) { /* written back as the daemon writes strings */
            Buf out = {0};
            json_string(&out, value->s, value->len);
            buf_free(&out);
        }
    }
    arena_free(arena);
    free(text);
    return 0;
}
