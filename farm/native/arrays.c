/* Arrays in the session's memory (docs/protocol.md §4.7): ARRAY_NEW, ARRAY_EMPTY, ARRAY_READ, ARRAY_WRITE. */
#define _GNU_SOURCE
#include "board.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Arrays at least this big get their own anonymous mapping, returned to the system when freed. */
#define MMAP_THRESHOLD (256u << 10)
/* Array storage is aligned for any SIMD load. */
#define ALIGNMENT 64

const char *const DTYPE_NAMES[DTYPE_COUNT] = {"bool",   "int8",   "int16",   "int32",   "int64",   "uint8",
                                              "uint16", "uint32", "uint64",  "float16", "float32", "float64"};
const int DTYPE_SIZES[DTYPE_COUNT] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8};

int dtype_index(const char *name) {
    for (int k = 0; k < DTYPE_COUNT; k++)
        if (!strcmp(name, DTYPE_NAMES[k])) return k;
    return -1;
}

int array_alloc(uint64_t nbytes, Array *a) {
    memset(a, 0, sizeof *a);
    a->nbytes = nbytes;
    if (nbytes > SIZE_MAX - ALIGNMENT) return -1;
    if (nbytes >= MMAP_THRESHOLD) {
        /* private: the default shared mapping gets no huge pages and faults in every 4 KiB page */
        void *map = mmap(NULL, (size_t)nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) return -1;
#ifdef MADV_HUGEPAGE
        madvise(map, (size_t)nbytes, MADV_HUGEPAGE);
#endif
        a->data = map;
        a->mapped = 1;
        return 0;
    }
    a->block = calloc(1, (size_t)nbytes + ALIGNMENT);
    if (!a->block) return -1;
    a->data = (char *)a->block + (ALIGNMENT - (uintptr_t)a->block % ALIGNMENT) % ALIGNMENT;
    return 0;
}

void array_release(Array *a) {
    if (a->mapped) munmap(a->data, (size_t)a->nbytes);
    else free(a->block);
    a->data = a->block = NULL;
}

/* The dtype and byte size a request's `shape` and `dtype` describe; ProtocolError or FarmError. */
int array_spec(Session *s, const JValue *meta, int *dtype, uint64_t *nbytes) {
    const JValue *shape = json_get(meta, "shape");
    const char *name;
    if (!shape) return fail(s, "ProtocolError", "request is missing the field 'shape'");
    if (shape->type != J_ARRAY)
        return fail(s, "ProtocolError", "request field 'shape' has type %s", json_type_name(shape));
    if (field_str(s, meta, "dtype", NULL, &name, NULL)) return -1;
    *dtype = dtype_index(name);
    if (*dtype < 0) {
        Buf quoted = {0};
        py_repr(&quoted, name, strlen(name) < 100 ? strlen(name) : 100);
        fail(s, "ProtocolError", "unsupported dtype %s", buf_str(&quoted));
        buf_free(&quoted);
        return -1;
    }
    uint64_t size = (uint64_t)DTYPE_SIZES[*dtype];
    int overflow = 0;
    for (size_t k = 0; k < shape->len; k++) {
        const JValue *dim = &shape->items[k];
        if (dim->type != J_INT || dim->i < 0)
            return fail(s, "ProtocolError", "array shape is not a list of non-negative integers");
        if (dim->big) overflow = 1;
        else if (size && (uint64_t)dim->i > UINT64_MAX / size) overflow = 1;
        else size *= (uint64_t)dim->i;
    }
    if (overflow && size) /* a zero dimension makes the array empty whatever the others say */
        return fail(s, "FarmError", "an array of more than %llu bytes exceeds the board's limit of %llu",
                    (unsigned long long)UINT64_MAX / 2, (unsigned long long)s->order->max_message_size);
    if (size > s->order->max_message_size)
        return fail(s, "FarmError", "an array of %llu bytes exceeds the board's limit of %llu",
                    (unsigned long long)size, (unsigned long long)s->order->max_message_size);
    *nbytes = overflow ? 0 : size;
    return 0;
}

static int store(Session *s, Array *a, int dtype, Reply *r) {
    a->dtype = dtype;
    uint64_t id = session_add(s, OBJ_ARRAY, a);
    buf_addf(&r->meta, "{\"id\":%llu}", (unsigned long long)id);
    return 0;
}

int op_array_new(Session *s, const JValue *meta, Array *received, Reply *r) {
    int dtype;
    uint64_t nbytes;
    if (array_spec(s, meta, &dtype, &nbytes)) return -1;
    uint64_t got = received ? received->nbytes : 0;
    if (got != nbytes)
        return fail(s, "ProtocolError", "array of %s needs %llu bytes, got %llu", DTYPE_NAMES[dtype],
                    (unsigned long long)nbytes, (unsigned long long)got);
    Array *a = received ? received : xmalloc(sizeof(Array));
    if (!received && array_alloc(0, a)) {
        free(a);
        return fail(s, "MemoryError", "no memory for an array");
    }
    return store(s, a, dtype, r);
}

int op_array_empty(Session *s, const JValue *meta, Reply *r) {
    int dtype;
    uint64_t nbytes;
    if (array_spec(s, meta, &dtype, &nbytes)) return -1;
    Array *a = xmalloc(sizeof(Array));
    if (array_alloc(nbytes, a)) {
        free(a);
        return fail(s, "MemoryError", "no memory for an array of %llu bytes", (unsigned long long)nbytes);
    }
    return store(s, a, dtype, r);
}

static Array *named_array(Session *s, const JValue *meta, int64_t *id) {
    int big;
    if (field_int(s, meta, "id", id, &big)) return NULL;
    Array *a = big || *id <= 0 ? NULL : session_object(s, (uint64_t)*id, OBJ_ARRAY);
    if (!a) fail(s, "FarmError", "array %lld was freed or is not of this session", (long long)*id);
    return a;
}

int op_array_read(Session *s, const JValue *meta, Reply *r) {
    int64_t id;
    Array *a = named_array(s, meta, &id);
    if (!a) return -1;
    r->payload = a->data;
    r->size = a->nbytes;
    return 0;
}

Array *array_for_write(Session *s, const JValue *meta, uint64_t nbytes) {
    const JValue *id = json_get(meta, "id");
    if (!id || id->type != J_INT || id->big || id->i <= 0) return NULL;
    Array *a = session_object(s, (uint64_t)id->i, OBJ_ARRAY);
    return a && a->nbytes == nbytes ? a : NULL;
}

int op_array_write(Session *s, const JValue *meta, const void *payload, uint64_t size, Reply *r) {
    (void)r;
    int64_t id;
    Array *a = named_array(s, meta, &id);
    if (!a) return -1;
    if (size != a->nbytes)
        return fail(s, "ArgumentError", "array %lld holds %llu bytes, got %llu", (long long)id,
                    (unsigned long long)a->nbytes, (unsigned long long)size);
    if (payload && size) memcpy(a->data, payload, (size_t)size);
    return 0;
}
