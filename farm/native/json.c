/* A bounded JSON reader and writer for the frames' metadata.
 *
 * The reader takes one value (objects, arrays, strings, numbers, true, false, null) with at most
 * JSON_MAX_DEPTH levels of nesting from a buffer whose length the caller already bounded (MAX_META), and
 * builds it in an arena freed at once. It decodes \u escapes (surrogate pairs joined; a lone surrogate is
 * kept as its three bytes, as Python's json does) and refuses everything else that is not JSON. */
#define _GNU_SOURCE
#include "board.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct Arena {
    struct Block *blocks;
};
struct Block {
    struct Block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

Arena *arena_new(void) { return xmalloc(sizeof(Arena)); }

void arena_free(Arena *a) {
    if (!a) return;
    for (struct Block *b = a->blocks, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(a);
}

static void *arena_alloc(Arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    struct Block *b = a->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof(struct Block) + cap);
        if (!b) return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = a->blocks;
        a->blocks = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

typedef struct {
    const unsigned char *p, *end, *start;
    Arena *arena;
    char *err;
    size_t errlen;
} Parser;

static int error(Parser *ps, const char *what) {
    snprintf(ps->err, ps->errlen, "%s at char %ld", what, (long)(ps->p - ps->start));
    return -1;
}

static void skip_space(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int hex4(Parser *ps, uint32_t *out) {
    if (ps->end - ps->p < 4) return error(ps, "Invalid \\uXXXX escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = ps->p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return error(ps, "Invalid \\uXXXX escape");
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(unsigned char *o, uint32_t cp) {
    if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
    if (cp < 0x800) return o[0] = (unsigned char)(0xC0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static int parse_string(Parser *ps, char **out, size_t *len) {
    ps->p++; /* the opening quote */
    const unsigned char *scan = ps->p;
    while (scan < ps->end && *scan != '"') scan += *scan == '\\' ? 2 : 1;
    if (scan >= ps->end) return error(ps, "Unterminated string starting");
    /* decoded text is never longer than its source */
    unsigned char *o = arena_alloc(ps->arena, (size_t)(scan - ps->p) + 1);
    if (!o) return error(ps, "Out of memory");
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned c = *ps->p;
        if (c < 0x20) return error(ps, "Invalid control character");
        if (c != '\\') {
            o[n++] = (unsigned char)c;
            ps->p++;
            continue;
        }
        ps->p++;
        c = *ps->p++;
        switch (c) {
        case '"': o[n++] = '"'; break;
        case '\\': o[n++] = '\\'; break;
        case '/': o[n++] = '/'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'u': {
            uint32_t cp, low;
            if (hex4(ps, &cp)) return -1;
            if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                const unsigned char *back = ps->p;
                ps->p += 2;
                if (hex4(ps, &low)) return -1;
                if (low >= 0xDC00 && low < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                else ps->p = back;
            }
            n += put_utf8(o + n, cp);
            break;
        }
        default: return error(ps, "Invalid \\escape");
        }
    }
    ps->p++;
    o[n] = 0;
    *out = (char *)o;
    *len = n;
    return 0;
}

static int parse_number(Parser *ps, JValue *v) {
    const unsigned char *s = ps->p;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return error(ps, "Expecting value");
    if (*ps->p == '0') ps->p++;
    else
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    int is_float = 0;
    if (ps->p < ps->end && *ps->p == '.') {
        is_float = 1;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return error(ps, "Expecting value");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_float = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return error(ps, "Expecting value");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    char text[64];
    size_t n = (size_t)(ps->p - s);
    if (is_float) {
        v->type = J_FLOAT;
        if (n >= sizeof text) {
            v->f = HUGE_VAL;
            return 0;
        }
        memcpy(text, s, n);
        text[n] = 0;
        v->f = strtod(text, NULL);
        return 0;
    }
    v->type = J_INT;
    int negative = *s == '-';
    uint64_t magnitude = 0;
    for (const unsigned char *d = s + negative; d < ps->p; d++) {
        if (magnitude > (UINT64_MAX - 9) / 10) {
            v->big = 1, v->i = negative ? -1 : 1;
            return 0;
        }
        magnitude = magnitude * 10 + (uint64_t)(*d - '0');
    }
    if (negative ? magnitude > (uint64_t)INT64_MAX + 1 : magnitude > (uint64_t)INT64_MAX)
        v->big = 1, v->i = negative ? -1 : 1;
    else v->i = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return 0;
}

static int parse_value(Parser *ps, JValue *v, int depth);

/* The items of an array or the members of an object, collected in a list first: their count is unknown. */
typedef struct Item {
    struct Item *next;
    JMember member;
} Item;

static int parse_container(Parser *ps, JValue *v, int depth, int object) {
    if (depth >= JSON_MAX_DEPTH) return error(ps, "Nested too deeply");
    ps->p++;
    Item *first = NULL, **tail = &first;
    size_t count = 0;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
        ps->p++;
    } else {
        for (;;) {
            Item *item = arena_alloc(ps->arena, sizeof(Item));
            if (!item) return error(ps, "Out of memory");
            skip_space(ps);
            if (object) {
                if (ps->p >= ps->end || *ps->p != '"')
                    return error(ps, "Expecting property name enclosed in double quotes");
                if (parse_string(ps, &item->member.key, &item->member.key_len)) return -1;
                skip_space(ps);
                if (ps->p >= ps->end || *ps->p != ':') return error(ps, "Expecting ':' delimiter");
                ps->p++;
            }
            if (parse_value(ps, &item->member.value, depth + 1)) return -1;
            *tail = item;
            tail = &item->next;
            count++;
            skip_space(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
                ps->p++;
                break;
            }
            return error(ps, "Expecting ',' delimiter");
        }
    }
    v->type = object ? J_OBJECT : J_ARRAY;
    v->len = count;
    if (object) v->members = arena_alloc(ps->arena, sizeof(JMember) * (count ? count : 1));
    else v->items = arena_alloc(ps->arena, sizeof(JValue) * (count ? count : 1));
    if (!v->members && !v->items) return error(ps, "Out of memory");
    size_t k = 0;
    for (Item *item = first; item; item = item->next, k++) {
        if (object) v->members[k] = item->member;
        else v->items[k] = item->member.value;
    }
    return 0;
}

static int literal(Parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return error(ps, "Expecting value");
    ps->p += n;
    return 0;
}

static int parse_value(Parser *ps, JValue *v, int depth) {
    skip_space(ps);
    if (ps->p >= ps->end) return error(ps, "Expecting value");
    switch (*ps->p) {
    case '{': return parse_container(ps, v, depth, 1);
    case '[': return parse_container(ps, v, depth, 0);
    case '"': v->type = J_STRING; return parse_string(ps, &v->s, &v->len);
    case 't': v->type = J_BOOL, v->i = 1; return literal(ps, "true");
    case 'f': v->type = J_BOOL, v->i = 0; return literal(ps, "false");
    case 'n': v->type = J_NULL; return literal(ps, "null");
    case 'N': v->type = J_FLOAT, v->f = NAN; return literal(ps, "NaN");
    case 'I': v->type = J_FLOAT, v->f = INFINITY; return literal(ps, "Infinity");
    default:
        if (ps->end - ps->p >= 9 && memcmp(ps->p, "-Infinity", 9) == 0) {
            v->type = J_FLOAT, v->f = -INFINITY;
            ps->p += 9;
            return 0;
        }
        return parse_number(ps, v);
    }
}

JValue *json_parse(const char *text, size_t len, Arena *arena, char *err, size_t errlen) {
    Parser ps = {(const unsigned char *)text, (const unsigned char *)text + len, (const unsigned char *)text,
                 arena, err, errlen};
    JValue *v = arena_alloc(arena, sizeof(JValue));
    if (!v) {
        snprintf(err, errlen, "Out of memory");
        return NULL;
    }
    if (parse_value(&ps, v, 0)) return NULL;
    skip_space(&ps);
    if (ps.p != ps.end) {
        error(&ps, "Extra data");
        return NULL;
    }
    return v;
}

const JValue *json_get(const JValue *object, const char *key) {
    if (!object || object->type != J_OBJECT) return NULL;
    size_t n = strlen(key);
    for (size_t k = object->len; k-- > 0;)
        if (object->members[k].key_len == n && memcmp(object->members[k].key, key, n) == 0)
            return &object->members[k].value;
    return NULL;
}

const char *json_type_name(const JValue *v) {
    switch (v->type) {
    case J_NULL: return "NoneType";
    case J_BOOL: return "bool";
    case J_INT: return "int";
    case J_FLOAT: return "float";
    case J_STRING: return "str";
    case J_ARRAY: return "list";
    default: return "dict";
    }
}

/* A JSON string of `n` bytes; ASCII out, as Python writes it; bytes that are not UTF-8 as \udcXX. */
void json_string(Buf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    buf_add(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') {
            buf_add(b, "\\", 1);
            buf_add(b, &u[i], 1);
            i++;
        } else if (c >= 0x20 && c < 0x7f) {
            buf_add(b, &u[i], 1);
            i++;
        } else if (c < 0x80) {
            buf_addf(b, "\\u%04x", c);
            i++;
        } else {
            size_t more = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 0;
            if (more && i + more < n && valid_utf8(u + i, more + 1)) {
                uint32_t cp = c & (0x3F >> more);
                for (size_t k = 1; k <= more; k++) cp = (cp << 6) | (u[i + k] & 0x3F);
                if (cp >= 0x10000) {
                    cp -= 0x10000;
                    buf_addf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
                } else {
                    buf_addf(b, "\\u%04x", cp);
                }
                i += more + 1;
            } else {
                buf_addf(b, "\\u%04x", 0xDC00 + c); /* Python's surrogateescape */
                i++;
            }
        }
    }
    buf_add(b, "\"", 1);
}

/* A float that reads back the same, always with a point or an exponent (so Python reads a float). */
void json_double(Buf *b, double value) {
    if (!isfinite(value)) {
        buf_adds(b, "null");
        return;
    }
    char text[40];
    snprintf(text, sizeof text, "%.17g", value);
    buf_adds(b, text);
    if (!strpbrk(text, ".eEn")) buf_adds(b, ".0");
}
