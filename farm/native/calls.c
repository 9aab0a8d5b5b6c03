/* Native code (docs/protocol.md §4.6): LOAD_MODULE (dlopen), GET_FUNCTION with the C-like signatures of
 * farm/signature.py, and CALL through libffi. */
#define _GNU_SOURCE
#include "calls.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- signatures ------------------------------------------------------------------------------ */

static const char *const QUALIFIERS[] = {"const", "volatile", "restrict", "__restrict", "__restrict__", "struct",
                                         "enum"};
static const char *const TYPE_WORDS[] = {"void", "char", "short", "int", "long", "signed", "unsigned", "float",
                                         "double"};
static const char *const ALIASES[][2] = {
    {"short int", "short"},
    {"signed short", "short"},
    {"unsigned short int", "unsigned short"},
    {"signed int", "int"},
    {"long int", "long"},
    {"signed long", "long"},
    {"unsigned long int", "unsigned long"},
    {"long long int", "long long"},
    {"signed long long", "long long"},
    {"unsigned long long int", "unsigned long long"},
};

static int in_list(const char *word, const char *const *list, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (!strcmp(word, list[k])) return 1;
    return 0;
}
#define IN(word, list) in_list(word, list, sizeof list / sizeof list[0])

/* What the session status says while a function runs, before its label. */
#define RUNNING "running "

/* The words of a type, split at whitespace and '*', qualifiers dropped, joined by single spaces. */
static void type_words(const char *text, size_t n, char *out, size_t cap, int *count) {
    size_t at = 0;
    *count = 0;
    out[0] = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (text[i] == ' ' || text[i] == '*')) i++;
        size_t start = i;
        while (i < n && text[i] != ' ' && text[i] != '*') i++;
        if (i == start) break;
        char word[64];
        size_t length = i - start < sizeof word - 1 ? i - start : sizeof word - 1;
        memcpy(word, text + start, length);
        word[length] = 0;
        if (IN(word, QUALIFIERS)) continue;
        at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "%s%s", *count ? " " : "", word);
        (*count)++;
    }
    if (at >= cap) out[cap - 1] = 0;
}

typedef struct {
    const char *name;
    int is_unsigned;
    int size;
} Platform;

static const Platform PLATFORM[] = {
    {"short", 0, sizeof(short)},         {"unsigned short", 1, sizeof(unsigned short)},
    {"int", 0, sizeof(int)},             {"signed", 0, sizeof(int)},
    {"unsigned", 1, sizeof(unsigned)},   {"unsigned int", 1, sizeof(unsigned)},
    {"long", 0, sizeof(long)},           {"unsigned long", 1, sizeof(unsigned long)},
    {"long long", 0, sizeof(long long)}, {"unsigned long long", 1, sizeof(unsigned long long)},
    {"size_t", 1, sizeof(size_t)},       {"ssize_t", 0, sizeof(ssize_t)},
    {"intptr_t", 0, sizeof(intptr_t)},   {"uintptr_t", 1, sizeof(uintptr_t)},
    {"ptrdiff_t", 0, sizeof(ptrdiff_t)},
};

static ffi_type *int_ffi(int is_unsigned, int size) {
    switch (size) {
    case 1: return is_unsigned ? &ffi_type_uint8 : &ffi_type_sint8;
    case 2: return is_unsigned ? &ffi_type_uint16 : &ffi_type_sint16;
    case 4: return is_unsigned ? &ffi_type_uint32 : &ffi_type_sint32;
    default: return is_unsigned ? &ffi_type_uint64 : &ffi_type_sint64;
    }
}

static int set_int(CType *t, int is_unsigned, int size) {
    char name[16];
    snprintf(name, sizeof name, "%sint%d", is_unsigned ? "u" : "", size * 8);
    t->kind = K_INT, t->is_unsigned = is_unsigned, t->size = size, t->ffi = int_ffi(is_unsigned, size);
    t->dtype = dtype_index(name);
    return 0;
}

/* A scalar's kind, dtype and size by its base spelling; 0 if unknown. */
static int scalar(const char *base, CType *t) {
    for (size_t k = 0; k < sizeof PLATFORM / sizeof PLATFORM[0]; k++)
        if (!strcmp(base, PLATFORM[k].name)) return set_int(t, PLATFORM[k].is_unsigned, PLATFORM[k].size), 1;
    for (int bits = 8; bits <= 64; bits *= 2) {
        char name[16];
        snprintf(name, sizeof name, "int%d_t", bits);
        if (!strcmp(base, name)) return set_int(t, 0, bits / 8), 1;
        snprintf(name, sizeof name, "uint%d_t", bits);
        if (!strcmp(base, name)) return set_int(t, 1, bits / 8), 1;
    }
    if (!strcmp(base, "signed char")) return set_int(t, 0, 1), 1;
    if (!strcmp(base, "unsigned char")) return set_int(t, 1, 1), 1;
    if (!strcmp(base, "bool") || !strcmp(base, "_Bool")) {
        t->kind = K_BOOL, t->size = 1, t->ffi = &ffi_type_uint8, t->dtype = dtype_index("bool");
        return 1;
    }
    if (!strcmp(base, "float")) return t->kind = K_FLOAT, t->size = 4, t->ffi = &ffi_type_float, t->dtype = 10, 1;
    if (!strcmp(base, "double")) return t->kind = K_FLOAT, t->size = 8, t->ffi = &ffi_type_double, t->dtype = 11, 1;
    static const char *const HALF[] = {"_Float16", "__fp16", "half", "float16_t"};
    if (IN(base, HALF)) return t->kind = K_FLOAT, t->size = 2, t->ffi = NULL, t->dtype = 9, 1;
    return 0;
}

typedef struct {
    Session *s;
    const char *where; /* "signature 'TEXT'" */
} Parse;

static int parse_type(Parse *ps, const char *text, size_t n, CType *t) {
    int stars = 0, count;
    for (size_t k = 0; k < n; k++) stars += text[k] == '*';
    char base[256];
    type_words(text, n, base, sizeof base, &count);
    for (size_t k = 0; k < sizeof ALIASES / sizeof ALIASES[0]; k++)
        if (!strcmp(base, ALIASES[k][0])) snprintf(base, sizeof base, "%s", ALIASES[k][1]);
    size_t at = (size_t)snprintf(t->spelling, sizeof t->spelling, "%s", base);
    for (int k = 0; k < stars && at < sizeof t->spelling; k++)
        at += (size_t)snprintf(t->spelling + at, sizeof t->spelling - at, " *");
    static const char *const RAW[] = {"void", "char", "signed char", "unsigned char"};
    if (stars && (IN(base, RAW) || stars > 1)) {
        t->kind = K_POINTER, t->dtype = -1, t->ffi = &ffi_type_pointer;
        return 0;
    }
    if (!strcmp(base, "void")) {
        t->kind = K_VOID, t->ffi = &ffi_type_void;
        snprintf(t->spelling, sizeof t->spelling, "void");
        return 0;
    }
    if (!strcmp(base, "char")) return set_int(t, 0, 1);
    if (!scalar(base, t)) {
        while (n && text[n - 1] == ' ') n--;
        while (n && text[0] == ' ') text++, n--;
        Buf quoted = {0};
        py_repr(&quoted, text, n);
        fail(ps->s, "ArgumentError", "unknown type %s in %s", buf_str(&quoted), ps->where);
        buf_free(&quoted);
        return -1;
    }
    if (stars) {
        t->kind = K_POINTER, t->ffi = &ffi_type_pointer;
        return 0;
    }
    if (!t->ffi)
        return fail(ps->s, "ArgumentError", "%s cannot be passed by value (%s); pass it through an array", base,
                    ps->where);
    return 0;
}

static int is_ident_start(char c) { return isalpha((unsigned char)c) || c == '_'; }
static int is_ident(char c) { return isalnum((unsigned char)c) || c == '_'; }

/* `const float *a` -> type `const float *`, name `a`; an array parameter `float a[4]` is a pointer. */
static void split_declarator(const char *text, size_t n, Buf *type, char *name, size_t cap) {
    Buf plain = {0};
    int is_array = memchr(text, '[', n) != NULL;
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '[') {
            while (plain.len && plain.data[plain.len - 1] == ' ') plain.len--;
            const char *close = memchr(text + i, ']', n - i);
            if (close) {
                i = (size_t)(close - text);
                continue;
            }
        }
        buf_add(&plain, &text[i], 1);
    }
    const char *p = plain.data ? plain.data : "";
    size_t length = plain.len;
    while (length && p[length - 1] == ' ') length--;
    while (length && p[0] == ' ') p++, length--;
    name[0] = 0;
    size_t start = length;
    while (start && is_ident(p[start - 1])) start--;
    if (start < length && start > 0 && is_ident_start(p[start]) && (p[start - 1] == ' ' || p[start - 1] == '*')) {
        char candidate[128], words[256];
        int count;
        snprintf(candidate, sizeof candidate, "%.*s", (int)(length - start), p + start);
        type_words(p, start, words, sizeof words, &count);
        if (!IN(candidate, TYPE_WORDS) && !IN(candidate, QUALIFIERS) && (count || memchr(p, '*', start))) {
            snprintf(name, cap, "%s", candidate);
            length = start;
        }
    }
    buf_add(type, p, length);
    if (is_array) buf_adds(type, " *");
    buf_free(&plain);
}

void free_signature(Signature *sig) {
    if (!sig) return;
    free(sig->params);
    free(sig->text);
    free(sig);
}

/* Parses `RET [NAME](TYPE [NAME], ...)`; NULL with an ArgumentError if it is not one. */
Signature *parse_signature(Session *s, const char *text, size_t n) {
    Buf compact = {0}, where = {0}, head = {0};
    for (size_t i = 0; i < n;) { /* any run of whitespace is one space */
        while (i < n && isspace((unsigned char)text[i])) i++;
        size_t start = i;
        while (i < n && !isspace((unsigned char)text[i])) i++;
        if (i > start) {
            if (compact.len) buf_add(&compact, " ", 1);
            buf_add(&compact, text + start, i - start);
        }
    }
    buf_adds(&where, "signature ");
    py_repr(&where, text, n);
    Parse ps = {s, buf_str(&where)};
    Signature *sig = xmalloc(sizeof(Signature));
    const char *c = buf_str(&compact);
    size_t len = compact.len;
    const char *open = len > 1 ? memchr(c + 1, '(', len - 1) : NULL;
    size_t end = len;
    if (end && c[end - 1] == ';') end--;
    while (end && c[end - 1] == ' ') end--;
    if (!open || !end || c[end - 1] != ')' || (size_t)(open - c) >= end - 1) {
        Buf quoted = {0};
        py_repr(&quoted, text, n);
        fail(s, "ArgumentError", "signature %s is not of the form 'RET NAME(TYPE NAME, ...)'", buf_str(&quoted));
        buf_free(&quoted);
        goto bad;
    }
    split_declarator(c, (size_t)(open - c), &head, sig->name, sizeof sig->name);
    if (parse_type(&ps, buf_str(&head), head.len, &sig->ret)) goto bad;
    const char *body = open + 1, *body_end = c + end - 1;
    while (body < body_end && *body == ' ') body++;
    while (body_end > body && body_end[-1] == ' ') body_end--;
    size_t body_len = (size_t)(body_end - body);
    if (body_len && !(body_len == 4 && !memcmp(body, "void", 4))) {
        sig->params = xmalloc(sizeof(CType) * (body_len / 2 + 2));
        for (const char *part = body;;) {
            const char *comma = memchr(part, ',', (size_t)(body_end - part));
            const char *part_end = comma ? comma : body_end;
            Buf type = {0};
            CType *t = &sig->params[sig->count];
            split_declarator(part, (size_t)(part_end - part), &type, t->name, sizeof t->name);
            int trimmed = 0;
            for (size_t k = 0; k < type.len; k++) trimmed |= type.data[k] != ' ';
            if (!trimmed) {
                buf_free(&type);
                fail(s, "ArgumentError", "empty parameter in %s", ps.where);
                goto bad;
            }
            int status = parse_type(&ps, type.data, type.len, t);
            buf_free(&type);
            if (status) goto bad;
            if (t->kind == K_VOID) {
                fail(s, "ArgumentError", "a parameter cannot be void in %s", ps.where);
                goto bad;
            }
            if (++sig->count > MAX_ARGS) {
                fail(s, "ArgumentError", "more than %d parameters in %s", MAX_ARGS, ps.where);
                goto bad;
            }
            if (!comma) break;
            part = comma + 1;
        }
    }
    sig->text = xstrdup(c);
    buf_free(&compact);
    buf_free(&where);
    buf_free(&head);
    return sig;
bad:
    buf_free(&compact);
    buf_free(&where);
    buf_free(&head);
    free_signature(sig);
    return NULL;
}

/* --- LOAD_MODULE, GET_FUNCTION ------------------------------------------------------------------ */

typedef struct {
    void *handle;
    char *name;
} Module;

static void *load_fresh(Session *s, const char *path) {
    char directory[4200];
    snprintf(directory, sizeof directory, "%s/.load-XXXXXX", s->root);
    if (!mkdtemp(directory)) return NULL;
    const char *base = strrchr(path, '/') + 1;
    char fresh[8400];
    snprintf(fresh, sizeof fresh, "%s/%s", directory, base);
    void *handle = NULL;
    if (link(path, fresh) == 0) handle = dlopen(fresh, RTLD_NOW | RTLD_LOCAL);
    remove_tree(directory); /* the loaded pages stay mapped */
    return handle;
}

void module_free(void *module) { free(((Module *)module)->name); }

void function_free(void *function) {
    Function *f = function;
    free_signature(f->signature);
    free(f->types);
    free(f->activity);
}

int op_load_module(Session *s, const JValue *meta, Reply *r) {
    const char *name;
    size_t n;
    char *path = NULL;
    if (field_str(s, meta, "name", NULL, &name, &n) || resolve(s, json_get(meta, "name"), 1, &path)) return -1;
    char built[32], board[32];
    int status = 0;
    struct stat info;
    if (elf_machine(path, built, sizeof built) && elf_machine("/proc/self/exe", board, sizeof board) &&
        strcmp(built, board)) {
        status = fail(s, "FarmError", "%s is built for %s, but this board runs %s code", name, built, board);
    } else if (stat(path, &info)) {
        status = fail_errno(s, errno, path);
    } else {
        int64_t mtime = (int64_t)info.st_mtim.tv_sec * 1000000000 + info.st_mtim.tv_nsec;
        Loaded *known = NULL;
        for (size_t k = 0; k < s->loaded_count; k++)
            if (!strcmp(s->loaded[k].path, path)) known = &s->loaded[k];
        int changed = known && (known->dev != info.st_dev || known->ino != info.st_ino || known->mtime_ns != mtime ||
                                known->size != info.st_size);
        dlerror();
        void *handle = changed ? load_fresh(s, path) : dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            const char *why = dlerror();
            status = fail(s, "OSError", "%s", why ? why : path);
        } else {
            if (!known) {
                Loaded *grown = realloc(s->loaded, (s->loaded_count + 1) * sizeof(Loaded));
                if (!grown) abort();
                s->loaded = grown;
                known = &s->loaded[s->loaded_count++];
                known->path = xstrdup(path);
            }
            known->dev = info.st_dev, known->ino = info.st_ino, known->mtime_ns = mtime, known->size = info.st_size;
            Module *module = xmalloc(sizeof(Module));
            module->handle = handle;
            module->name = xstrdup(name);
            buf_addf(&r->meta, "{\"id\":%llu}", (unsigned long long)session_add(s, OBJ_MODULE, module));
        }
    }
    free(path);
    return status;
}

int op_get_function(Session *s, const JValue *meta, Reply *r) {
    int64_t module_id;
    int big;
    const char *name, *text;
    size_t text_len;
    if (field_int(s, meta, "module", &module_id, &big) || field_str(s, meta, "name", NULL, &name, NULL) ||
        field_str(s, meta, "signature", "", &text, &text_len))
        return -1;
    Module *module = big || module_id <= 0 ? NULL : session_object(s, (uint64_t)module_id, OBJ_MODULE);
    if (!module) return fail(s, "FarmError", "module %lld is not loaded in this session", (long long)module_id);
    void *symbol = dlsym(module->handle, name);
    if (!symbol) {
        Buf quoted = {0};
        py_repr(&quoted, name, strlen(name));
        fail(s, "FarmError", "%s has no function %s", module->name, buf_str(&quoted));
        buf_free(&quoted);
        return -1;
    }
    Signature *sig = NULL;
    if (text_len && !(sig = parse_signature(s, text, text_len))) return -1;
    Function *f = xmalloc(sizeof(Function));
    f->symbol = symbol;
    f->signature = sig;
    Buf activity = {0};
    buf_addf(&activity, "%s%s() from %s", RUNNING, name, module->name);
    f->activity = activity.data ? activity.data : xstrdup(RUNNING "a function");
    f->label = f->activity + strlen(RUNNING);
    if (sig) {
        f->types = xmalloc(sizeof(ffi_type *) * (size_t)(sig->count + 1));
        for (int k = 0; k < sig->count; k++) f->types[k] = sig->params[k].ffi;
        if (ffi_prep_cif(&f->cif, FFI_DEFAULT_ABI, (unsigned)sig->count, sig->ret.ffi, f->types) != FFI_OK) {
            free_signature(sig);
            free(f->types);
            free(f->activity);
            free(f);
            return fail(s, "ArgumentError", "libffi cannot call a function of this signature");
        }
    }
    buf_addf(&r->meta, "{\"id\":%llu}", (unsigned long long)session_add(s, OBJ_FUNCTION, f));
    return 0;
}

/* --- CALL ------------------------------------------------------------------------------------------- */

static const char *tag_name(char tag) {
    switch (tag) {
    case 'a': return "an array";
    case 'f': return "a float";
    case 'n': return "None";
    default: return "an integer";
    }
}

static void describe(Buf *b, const Signature *sig, int index) {
    buf_addf(b, "argument %d", index + 1);
    if (sig->params[index].name[0]) buf_addf(b, " '%s'", sig->params[index].name);
    buf_addf(b, " of %s", sig->name[0] ? sig->name : "the function");
}

/* Whether an integer argument (tag i: int64, u: uint64) lies in the range of its C type. */
static int fits(const CType *t, char tag, uint64_t raw) {
    int bits = t->size * 8;
    if (tag == 'u') return t->is_unsigned && bits == 64;
    int64_t v = (int64_t)raw;
    if (t->is_unsigned) return v >= 0 && (bits == 64 || (uint64_t)v < (1ull << bits));
    if (bits == 64) return 1;
    return v >= -(1ll << (bits - 1)) && v < (1ll << (bits - 1));
}

static int check_signature(Session *s, const Signature *sig, const char *tags, int count, const uint64_t *raw,
                           Array *const *arrays) {
    Buf b = {0};
    if (count != sig->count) {
        fail(s, "ArgumentError", "%s takes %d argument%s (%s), got %d", sig->name[0] ? sig->name : "the function",
             sig->count, sig->count == 1 ? "" : "s", sig->text, count);
        return -1;
    }
    for (int k = 0; k < count; k++) {
        const CType *t = &sig->params[k];
        const char *accepted = t->kind == K_POINTER ? "an" : t->kind == K_FLOAT ? "iuf" : "iu";
        if (!strchr(accepted, tags[k])) {
            describe(&b, sig, k);
            fail(s, "ArgumentError", "%s expects %s (%s), got %s", buf_str(&b),
                 t->kind == K_POINTER ? "an array" : t->kind == K_FLOAT ? "a number" : "an integer", t->spelling,
                 tag_name(tags[k]));
            buf_free(&b);
            return -1;
        }
        if (tags[k] == 'a' && t->dtype >= 0 && arrays[k]->dtype != t->dtype) {
            describe(&b, sig, k);
            fail(s, "ArgumentError", "%s expects a %s array (%s), got a %s array", buf_str(&b),
                 DTYPE_NAMES[t->dtype], t->spelling, DTYPE_NAMES[arrays[k]->dtype]);
            buf_free(&b);
            return -1;
        }
    }
    for (int k = 0; k < count; k++) {
        const CType *t = &sig->params[k];
        if (t->kind != K_INT || fits(t, tags[k], raw[k])) continue;
        int bits = t->size * 8;
        describe(&b, sig, k);
        char value[32], low[32], high[32];
        if (tags[k] == 'u') snprintf(value, sizeof value, "%llu", (unsigned long long)raw[k]);
        else snprintf(value, sizeof value, "%lld", (long long)(int64_t)raw[k]);
        snprintf(low, sizeof low, "%lld", t->is_unsigned ? 0ll : (bits == 64 ? (long long)INT64_MIN : -(1ll << (bits - 1))));
        if (t->is_unsigned) snprintf(high, sizeof high, "%llu", bits == 64 ? (unsigned long long)UINT64_MAX : (1ull << bits) - 1);
        else snprintf(high, sizeof high, "%lld", bits == 64 ? (long long)INT64_MAX : (1ll << (bits - 1)) - 1);
        fail(s, "ArgumentError", "%s is %s, outside the range of %s (%s to %s)", buf_str(&b), value, t->spelling, low,
             high);
        buf_free(&b);
        return -1;
    }
    return 0;
}

/* The value of argument k converted to its parameter's C type. */
static void convert(Prepared *call, int k, const CType *t, char tag, uint64_t raw, Array *array) {
    double number = tag == 'f' ? 0 : tag == 'u' ? (double)raw : (double)(int64_t)raw;
    if (tag == 'f') memcpy(&number, &raw, sizeof number);
    if (t->kind == K_POINTER) call->storage[k].pointer = array ? array->data : NULL;
    else if (t->kind == K_FLOAT && t->size == 4) call->storage[k].f32 = (float)number;
    else if (t->kind == K_FLOAT) call->storage[k].f64 = number;
    else if (t->kind == K_BOOL) call->storage[k].u8 = raw != 0;
    else if (t->size == 1) call->storage[k].u8 = (uint8_t)raw;
    else if (t->size == 2) call->storage[k].u16 = (uint16_t)raw;
    else if (t->size == 4) call->storage[k].u32 = (uint32_t)raw;
    else call->storage[k].u64 = raw;
    call->values[k] = &call->storage[k];
}

int prepare_call(Session *s, const unsigned char *payload, uint64_t size, Prepared *call) {
    memset(call, 0, sizeof *call);
    if (size < 6) return fail(s, "ProtocolError", "call payload of %llu bytes is shorter than its prefix",
                              (unsigned long long)size);
    uint32_t function_id = get_u32(payload);
    int count = get_u16(payload + 4);
    if (size < 6 + (uint64_t)count)
        return fail(s, "ProtocolError", "call payload is too short for %d argument tags", count);
    const char *tags = (const char *)payload + 6;
    int good = count <= MAX_ARGS;
    for (int k = 0; good && k < count; k++) good = tags[k] && strchr("aiufn", tags[k]) != NULL;
    if (!good) {
        Buf quoted = {0};
        py_repr(&quoted, tags, (size_t)(count < MAX_ARGS ? count : MAX_ARGS));
        fail(s, "ProtocolError", "bad call argument tags %s", buf_str(&quoted));
        buf_free(&quoted);
        return -1;
    }
    if (size != 6 + 9 * (uint64_t)count)
        return fail(s, "ProtocolError", "call payload is %llu bytes, expected %llu", (unsigned long long)size,
                    (unsigned long long)(6 + 9 * (uint64_t)count));
    Function *f = session_object(s, function_id, OBJ_FUNCTION);
    if (!f) return fail(s, "FarmError", "function %u was not looked up in this session", function_id);
    uint64_t raw[MAX_ARGS];
    Array *arrays[MAX_ARGS] = {0};
    for (int k = 0; k < count; k++) {
        raw[k] = get_u64(payload + 6 + count + 8 * k);
        if (tags[k] != 'a') continue;
        arrays[k] = session_object(s, raw[k], OBJ_ARRAY);
        if (!arrays[k])
            return fail(s, "ArgumentError", "argument %d is an array that was freed or is not of this session", k + 1);
    }
    call->function = f;
    call->count = count;
    call->first = count && tags[0] == 'a' ? arrays[0] : NULL;
    if (f->signature) {
        if (check_signature(s, f->signature, tags, count, raw, arrays)) return -1;
        for (int k = 0; k < count; k++) convert(call, k, &f->signature->params[k], tags[k], raw[k], arrays[k]);
        call->use = &f->cif;
        return 0;
    }
    /* without a signature: pointers, C int and double */
    for (int k = 0; k < count; k++) {
        CType t = {.kind = K_INT, .size = sizeof(int)};
        if (tags[k] == 'a' || tags[k] == 'n') t.kind = K_POINTER, call->types[k] = &ffi_type_pointer;
        else if (tags[k] == 'f') t.kind = K_FLOAT, t.size = 8, call->types[k] = &ffi_type_double;
        else if (tags[k] == 'u' || !fits(&t, 'i', raw[k])) {
            char value[32];
            if (tags[k] == 'u') snprintf(value, sizeof value, "%llu", (unsigned long long)raw[k]);
            else snprintf(value, sizeof value, "%lld", (long long)(int64_t)raw[k]);
            return fail(s, "ArgumentError",
                        "argument %d is %s, which does not fit a C int; give the function a signature", k + 1, value);
        } else call->types[k] = &ffi_type_sint;
        convert(call, k, &t, tags[k], raw[k], arrays[k]);
    }
    if (ffi_prep_cif(&call->cif, FFI_DEFAULT_ABI, (unsigned)count, &ffi_type_sint, call->types) != FFI_OK)
        return fail(s, "ArgumentError", "libffi cannot make this call");
    call->use = &call->cif;
    return 0;
}

/* The 9-byte result record of a call that returned into `result` (docs/protocol.md §4.6). */
void call_result(const Prepared *call, void *result, unsigned char out[9]) {
    const Signature *sig = call->function->signature;
    CType ret = sig ? sig->ret : (CType){.kind = K_INT, .size = sizeof(int)};
    uint64_t value = 0;
    char tag = 'i';
    if (ret.kind == K_VOID) tag = 'v';
    else if (ret.kind == K_FLOAT) {
        double number = ret.size == 4 ? (double)*(float *)result : *(double *)result;
        memcpy(&value, &number, sizeof value);
        tag = 'f';
    } else if (ret.kind == K_POINTER) {
        uintptr_t pointer = (uintptr_t) * (void **)result;
        value = pointer;
        tag = pointer == 0 ? 'v' : value >> 63 ? 'u' : 'i';
    } else if (ret.kind == K_BOOL) {
        value = (uint8_t) * (ffi_arg *)result != 0;
    } else if ((size_t)ret.size < sizeof(ffi_arg)) { /* libffi widens small results to ffi_arg */
        ffi_sarg wide = *(ffi_sarg *)result;
        switch (ret.size) {
        case 1: value = ret.is_unsigned ? (uint64_t)(uint8_t)wide : (uint64_t)(int64_t)(int8_t)wide; break;
        case 2: value = ret.is_unsigned ? (uint64_t)(uint16_t)wide : (uint64_t)(int64_t)(int16_t)wide; break;
        default: value = ret.is_unsigned ? (uint64_t)(uint32_t)wide : (uint64_t)(int64_t)(int32_t)wide; break;
        }
    } else if (ret.size == 4) {
        value = ret.is_unsigned ? (uint64_t) * (uint32_t *)result : (uint64_t)(int64_t) * (int32_t *)result;
    } else {
        value = *(uint64_t *)result;
        if (ret.is_unsigned && value >> 63) tag = 'u';
    }
    out[0] = (unsigned char)tag;
    put_u64(out + 1, value);
}

/* A CALL of the current pipeline (docs/protocol.md §4.10): not run once an earlier one failed. */
int op_pipelined_call(Session *s, uint32_t request_id, const unsigned char *payload, uint64_t size, Reply *r) {
    if (s->pipeline_failed[0])
        return fail(s, "SkippedCallError", "not run: %s, earlier in this pipeline, failed", s->pipeline_failed);
    if (op_call(s, payload, size, r) == 0) return 0;
    Function *f = size >= 4 ? session_object(s, get_u32(payload), OBJ_FUNCTION) : NULL;
    snprintf(s->pipeline_failed, sizeof s->pipeline_failed, "%.500s (request %u)", f ? f->label : "a call", request_id);
    return -1;
}

int op_call(Session *s, const unsigned char *payload, uint64_t size, Reply *r) {
    /* A session process answers one request at a time: one call's storage serves them all (it is too large to
       allocate per call, and malloc would consolidate its free lists each time). */
    static Prepared call;
    if (prepare_call(s, payload, size, &call)) return -1;
    status_running(s->order->status, call.function->activity);
    _Alignas(16) unsigned char result[16] = {0};
    ffi_call(call.use, FFI_FN(call.function->symbol), result, call.values);
    unsigned char record[9];
    call_result(&call, result, record);
    buf_add(&r->owned, record, 9);
    return 0;
}
