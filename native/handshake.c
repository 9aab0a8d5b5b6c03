/* TVM's data-plane hello and the board's reply (docs/protocol.md §1, farm/protocol/handshake.py). */
#define _GNU_SOURCE
#include "board.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

static int parse_timeout(const char *text, size_t n, double *out, char *why, size_t whylen) {
    char value[64];
    if (n == 0 || n >= sizeof value) goto bad;
    memcpy(value, text, n);
    value[n] = 0;
    char *end;
    double seconds = strtod(value, &end);
    if (end != value + n || strchr(value, 'x') || strchr(value, 'X')) goto bad;
    if (!isfinite(seconds)) {
        snprintf(why, whylen, "handshake option -timeout=%s is not a finite number", value);
        return -1;
    }
    if (seconds < 0) {
        snprintf(why, whylen, "handshake option -timeout=%s is negative", value);
        return -1;
    }
    *out = seconds;
    return 0;
bad:
    snprintf(why, whylen, "handshake option -timeout=%.*s is not a number", (int)(n < 64 ? n : 64), text);
    return -1;
}

/* Split `ROLE:KEY [-name=value ...]`; only -timeout is used, unknown options are ignored. */
static int parse_key(const char *text, size_t n, Hello *hello, char *why, size_t whylen) {
    size_t i = 0;
    while (i < n && is_space((unsigned char)text[i])) i++;
    size_t start = i;
    while (i < n && !is_space((unsigned char)text[i])) i++;
    const char *colon = memchr(text + start, ':', i - start);
    if (i == start || !colon) {
        snprintf(why, whylen, "handshake key is not of the form ROLE:KEY");
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
    while (i < n) {
        while (i < n && is_space((unsigned char)text[i])) i++;
        size_t token = i;
        while (i < n && !is_space((unsigned char)text[i])) i++;
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
    size_t at = (size_t)snprintf(out, cap, "no protocol of this farm (first bytes b'");
    for (size_t k = 0; k < n && k < 4 && at < cap; k++)
        at += (size_t)(data[k] >= 0x20 && data[k] < 0x7f && data[k] != '\\' && data[k] != '\''
                           ? snprintf(out + at, cap - at, "%c", data[k])
                           : snprintf(out + at, cap - at, "\\x%02x", data[k]));
    if (at < cap) snprintf(out + at, cap - at, "')");
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
    if (parse_key((const char *)data + 8, (size_t)length, hello, why, whylen)) return -1;
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
