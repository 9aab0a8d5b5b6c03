/* The fuzz targets' session: a directory of its own, two functions and two arrays (see fuzz.h). */
#define _GNU_SOURCE
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static SessionOrder order = {.key = "fuzz", .name = "fuzz", .max_message_size = FUZZ_MAX_MESSAGE};
static unsigned char status[STATUS_SIZE];
static char *root;

static void remove_root(void) { remove_tree(root); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    log_level = LOG_ERROR + 1; /* the daemon's complaints about hostile input are expected by the thousand */
    char directory[] = "/tmp/farm-fuzz-XXXXXX";
    if (!mkdtemp(directory) || !(root = realpath(directory, NULL))) {
        perror("farm fuzz: cannot make a session directory");
        abort();
    }
    atexit(remove_root);
    order.directory = root;
    order.status = status;
    return 0;
}

static void fuzz_function(Session *s, const char *signature) {
    Function *f = xmalloc(sizeof(Function));
    memset(f, 0, sizeof *f);
    f->symbol = (void *)abort; /* never called: the targets only prepare calls */
    f->activity = xstrdup("running f() from fuzz.so");
    f->label = f->activity + strlen("running ");
    if (signature) {
        f->signature = parse_signature(s, signature, strlen(signature));
        if (!f->signature) abort();
        f->types = xmalloc(sizeof(ffi_type *) * (size_t)(f->signature->count + 1));
        for (int k = 0; k < f->signature->count; k++) f->types[k] = f->signature->params[k].ffi;
        if (ffi_prep_cif(&f->cif, FFI_DEFAULT_ABI, (unsigned)f->signature->count, f->signature->ret.ffi, f->types) !=
            FFI_OK)
            abort();
    }
    session_add(s, OBJ_FUNCTION, f);
}

static void fuzz_array(Session *s, int dtype, uint64_t nbytes) {
    Array *a = xmalloc(sizeof(Array));
    if (array_alloc(nbytes, a)) abort();
    a->dtype = dtype;
    session_add(s, OBJ_ARRAY, a);
}

Session *fuzz_session(void) {
    Session *s = xmalloc(sizeof(Session));
    memset(s, 0, sizeof *s);
    s->order = &order;
    s->root = xstrdup(root);
    s->next_id = 1;
    s->conn.fd = -1;
    fuzz_function(s, FUZZ_SIGNATURE);
    fuzz_function(s, NULL);
    fuzz_array(s, dtype_index("float32"), 64);
    fuzz_array(s, dtype_index("int32"), 16);
    return s;
}

void fuzz_session_free(Session *s) {
    for (size_t id = 1; id < s->objects_cap; id++) {
        Obj *o = &s->objects[id];
        if (o->kind == OBJ_ARRAY) array_release(o->p);
        else if (o->kind == OBJ_FUNCTION) function_free(o->p);
        else continue;
        free(o->p);
    }
    free(s->objects);
    free(s->root);
    buf_free(&s->err_message);
    free(s);
}
