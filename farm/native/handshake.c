/* TVM's data-plane hello and the board's reply (docs/protocol.md §1, farm/protocol/handshake.py). */
#define _GNU_SOURCE
#include "board.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The byte length of the whitespace character at text[i] as Python's str.split() counts whitespace, or 0. */
static size_t space_at(const char *text, size_t n, size_t i) {
    const unsigned char *s = (const unsigned char *)text + i;
    unsigned c = s[0];
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return 1;
    if (c < 0xC2 || i + 1 >= n) return 0;
    if (c == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if ((c & 0xF0) != 0xE0 || i + 2 >= n || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    uint32_t cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    int space = cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
                cp == 0x205F || cp == 0x3000;
    return space ? 3 : 0;
}

static size_t skip_space(const char *text, size_t n, size_t i) {
    size_t k;
    while (i < n && (k = space_at(text, n, i))) i += k;
    return i;
}

static size_t skip_token(const char *text, size_t n, size_t i) {
    while (i < n && !space_at(text, n, i)) i++;
    return i;
}

/* Python's float() of an option's value: a decimal number, inf, infinity or nan in any case, with underscores
 * only between digits; 0 and the value, or -1. */
static int python_float(const char *text, size_t n, double *out) {
    char value[MAX_KEY_LENGTH + 1];
    size_t length = 0;
    if (n == 0 || n >= sizeof value) return -1;
    for (size_t k = 0; k < n; k++) {
        char c = text[k];
        if (c == '_') {
            if (k == 0 || k + 1 == n || !isdigit((unsigned char)text[k - 1]) || !isdigit((unsigned char)text[k + 1]))
                return -1;
            continue;
        }
        if (!(isdigit((unsigned char)c) || strchr("+-.eEinfatyINFATY", c))) return -1;
        value[length++] = c;
    }
    value[length] = 0;
    char *end;
    *out = strtod(value, &end);
    return end == value + length && length ? 0 : -1;
}

static int parse_timeout(const char *text, size_t n, double *out, char *why, size_t whylen) {
    double seconds;
    if (python_float(text, n, &seconds)) {
        snprintf(why, whylen, "handshake option -timeout=%.*s is not a number", (int)n, text);
        return -1;
    }
    if (!isfinite(seconds)) {
        snprintf(why, whylen, "handshake option -timeout=%.*s is not a finite number", (int)n, text);
        return -1;
    }
    if (seconds < 0) {
        snprintf(why, whylen, "handshake option -timeout=%.*s is negative", (int)n, text);
        return -1;
    }
    *out = seconds;
    return 0;
}

/* Split `ROLE:KEY [-name=value ...]`; only -timeout is used, unknown options are ignored. */
int key_parse(const char *text, size_t n, Hello *hello, char *why, size_t whylen) {
    size_t start = skip_space(text, n, 0), i = skip_token(text, n, start);
    const char *colon = i > start ? memchr(text + start, ':', i - start) : NULL;
    if (!colon) {
        Buf quoted = {0};
        py_repr_limit(&quoted, text, n, 80);
        snprintf(why, whylen, "handshake key %s is not of the form ROLE:KEY", buf_str(&quoted));
        buf_free(&quoted);
        return -1;
    }
    size_t role_len = (size_t)(colon - (text + start)), key_len = i - start - role_len - 1;
    memcpy(hello->role, text + start, role_len);
    hello->role[role_len] = 0;
    memcpy(hello->key, colon + 1, key_len);
    hello->key[key_len] = 0;
    hello->timeout = 0;
    const char *timeout = NULL;
    size_t timeout_len = 0;
    for (;;) {
        size_t token = skip_space(text, n, i);
        i = skip_token(text, n, token);
        if (token == i) break;
        while (token < i && text[token] == '-') token++;
        const char *equals = memchr(text + token, '=', i - token);
        size_t name_len = equals ? (size_t)(equals - (text + token)) : i - token;
        if (name_len == 7 && memcmp(text + token, "timeout", 7) == 0) {
            timeout = equals ? equals + 1 : text + i;
            timeout_len = equals ? (size_t)(text + i - (equals + 1)) : 0;
        }
    }
    if (timeout && parse_timeout(timeout, timeout_len, &hello->timeout, why, whylen)) return -1;
    return 0;
}

/* What a peer spoke, named from its first bytes, as farm.protocol.peers.spoke names it. */
void spoke(const unsigned char *data, size_t n, char *out, size_t cap) {
    if (n >= 1 && data[0] == 0x16 && (n < 2 || data[1] == 3)) {
        snprintf(out, cap, "TLS (is TLS on at one end only?)");
        return;
    }
    if (n >= 4) {
        uint32_t magic = get_u32(data);
        const char *name = magic == 0xFF271 ? "TVM's data-plane handshake" : magic == 0x2F271 ? "TVM's tracker protocol"
                         : magic == AUTH_MAGIC ? "the farm's proof of its secret" : NULL;
        if (name) {
            snprintf(out, cap, "%s", name);
            return;
        }
    }
    size_t first = n < 4 ? n : 4;
    int single = memchr(data, '\'', first) != NULL, twice = memchr(data, '"', first) != NULL;
    char quote = single && !twice ? '"' : '\'';
    size_t at = (size_t)snprintf(out, cap, "no protocol of this farm (first bytes b%c", quote);
    for (size_t k = 0; k < first && at < cap; k++) {
        unsigned char c = data[k];
        if (c == '\\' || c == (unsigned char)quote) at += (size_t)snprintf(out + at, cap - at, "\\%c", c);
        else if (c == '\t') at += (size_t)snprintf(out + at, cap - at, "\\t");
        else if (c == '\n') at += (size_t)snprintf(out + at, cap - at, "\\n");
        else if (c == '\r') at += (size_t)snprintf(out + at, cap - at, "\\r");
        else if (c >= 0x20 && c < 0x7f) at += (size_t)snprintf(out + at, cap - at, "%c", c);
        else at += (size_t)snprintf(out + at, cap - at, "\\x%02x", c);
    }
    if (at < cap) snprintf(out + at, cap - at, "%c)", quote);
}

int hello_parse(const unsigned char *data, size_t n, Hello *hello, size_t *used, char *why, size_t whylen) {
    if (n >= 4 && get_u32(data) != RPC_MAGIC) {
        char what[80];
        spoke(data, n, what, sizeof what);
        snprintf(why, whylen, "wrong handshake magic 0x%X (expected 0x%X): %s", get_u32(data), RPC_MAGIC, what);
        return -1;
    }
    if (n < 8) return 0;
    int32_t length = (int32_t)get_u32(data + 4);
    if (length < 0 || length > MAX_KEY_LENGTH) {
        snprintf(why, whylen, "handshake key length %d is outside 0..%d", length, MAX_KEY_LENGTH);
        return -1;
    }
    if (n < 8 + (size_t)length) return 0;
    if (!valid_utf8(data + 8, (size_t)length)) {
        snprintf(why, whylen, "handshake key is not UTF-8");
        return -1;
    }
    if (key_parse((const char *)data + 8, (size_t)length, hello, why, whylen)) return -1;
    *used = 8 + (size_t)length;
    return 1;
}

void reply_encode(Buf *out, uint32_t code, const char *text) {
    unsigned char head[8];
    put_u32(head, code);
    if (code == CODE_MISMATCH) {
        buf_add(out, head, 4);
        return;
    }
    size_t n = strlen(text);
    if (n > MAX_KEY_LENGTH) {
        n = MAX_KEY_LENGTH;
        while (n && ((unsigned char)text[n] & 0xC0) == 0x80) n--; /* whole characters */
    }
    put_u32(head + 4, (uint32_t)n);
    buf_add(out, head, 8);
    buf_add(out, text, n);
}
