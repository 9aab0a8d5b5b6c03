/* A request as a hostile client sends it after the handshake: the frame header (header_decode), the metadata
 * (meta_decode) and what the request's operation decodes from them and from its payload before it acts. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static void decode_name(Session *s, const JValue *meta) {
    const JValue *name = json_get(meta, "name");
    char *path = NULL;
    if (!name || name->type != J_STRING) return;
    if (resolve(s, name, 1, &path) == 0) free(path);
    if (resolve(s, name, 0, &path) == 0) free(path);
}

static void decode_request(Session *s, const Header *h, const JValue *meta, const unsigned char *payload,
                           size_t size) {
    if (release_field(s, meta)) return;
    switch (h->op) {
    case OP_TIME: /* options, then a call's payload */
    case OP_CALL:
    case OP_PIPELINED_CALL: {
        if (h->op == OP_TIME && timing_check(s, meta)) break;
        Prepared *call = xmalloc(sizeof(Prepared));
        prepare_call(s, payload, size, call);
        free(call);
        break;
    }
    case OP_ARRAY_NEW:
    case OP_ARRAY_EMPTY: {
        int dtype;
        uint64_t nbytes;
        array_spec(s, meta, &dtype, &nbytes);
        break;
    }
    case OP_ARRAY_READ:
    case OP_ARRAY_WRITE: array_for_write(s, meta, size); break;
    case OP_GET_FUNCTION: {
        const char *text;
        size_t n;
        if (field_str(s, meta, "signature", "", &text, &n) == 0 && n) free_signature(parse_signature(s, text, n));
        break;
    }
    case OP_UPLOAD:
    case OP_DOWNLOAD:
    case OP_REMOVE:
    case OP_LISTDIR:
    case OP_LOAD_MODULE: decode_name(s, meta); break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Header h;
    char why[300];
    if (size < FRAME_HEADER || header_decode(data, &h, FUZZ_MAX_MESSAGE, why, sizeof why)) return 0;
    data += FRAME_HEADER, size -= FRAME_HEADER;
    size_t meta_len = h.meta_len < size ? h.meta_len : size;
    size_t payload_len = h.size < size - meta_len ? (size_t)h.size : size - meta_len;
    /* copies of exactly the received lengths: a read past either is a report */
    char *text = malloc(meta_len ? meta_len : 1);
    unsigned char *payload = malloc(payload_len ? payload_len : 1);
    if (!text || !payload) abort();
    memcpy(text, data, meta_len);
    memcpy(payload, data + meta_len, payload_len);
    Session *s = fuzz_session();
    Arena *arena = arena_new();
    JValue empty = {.type = J_OBJECT};
    const JValue *meta = &empty;
    if (meta_len == 0 || meta_decode(s, text, meta_len, arena, &meta) == 0)
        decode_request(s, &h, meta, payload, payload_len);
    arena_free(arena);
    fuzz_session_free(s);
    free(payload);
    free(text);
    return 0;
}
