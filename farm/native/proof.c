/* The acceptor's side of the farm-secret proof (docs/security.md, farm/protocol/auth.py):
 *
 *   connector -> board   int32 AUTH_MAGIC, uint8 version, 32-byte nonce Nc
 *   board -> connector   32-byte nonce Na, HMAC(secret, "farm-auth-v1 server" Nc Na)
 *   connector -> board   HMAC(secret, "farm-auth-v1 client" Na Nc)
 *   board -> connector   uint8 1 (admitted) or 0 (refused)
 */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AUTH_VERSION 1
#define MIN_SECRET 16
#define MAX_SECRET 4096

static int random_bytes(unsigned char *out, size_t n) {
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, out + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    return got == n ? 0 : -1;
}

void proof_clear(Proof *p) { explicit_bzero(p, sizeof *p); }

int proof_start(Proof *p) {
    memset(p, 0, sizeof *p);
    return random_bytes(p->ours, NONCE_SIZE);
}

static void mac(const unsigned char *secret, size_t secret_len, const char *label, const unsigned char *first,
                const unsigned char *second, unsigned char out[32]) {
    char prefix[32];
    int n = snprintf(prefix, sizeof prefix, "farm-auth-v1 %s", label);
    const unsigned char *parts[3] = {(const unsigned char *)prefix, first, second};
    size_t lens[3] = {(size_t)n, NONCE_SIZE, NONCE_SIZE};
    hmac_sha256(secret, secret_len, parts, lens, 3, out);
}

/* Constant time: how many bytes differ is not told by how long it takes. */
static int same(const unsigned char *a, const unsigned char *b, size_t n) {
    unsigned char diff = 0;
    for (size_t k = 0; k < n; k++) diff |= a[k] ^ b[k];
    return diff == 0;
}

long proof_feed(Proof *p, const unsigned char *secret, size_t secret_len, const unsigned char *data, size_t n,
                Buf *out, char *why, size_t whylen) {
    size_t used = 0;
    if (p->stage == 0) {
        if (n >= 4 && get_u32(data) != AUTH_MAGIC) {
            char what[80];
            spoke(data, n, what, sizeof what);
            snprintf(why, whylen, "the other end did not authenticate: it spoke %s without the farm secret", what);
            return -1;
        }
        if (n < 5 + NONCE_SIZE) return 0;
        if (data[4] != AUTH_VERSION) {
            snprintf(why, whylen, "the other end speaks authentication version %d, not %d", data[4], AUTH_VERSION);
            return -1;
        }
        memcpy(p->theirs, data + 5, NONCE_SIZE);
        unsigned char proof[MAC_SIZE];
        mac(secret, secret_len, "server", p->theirs, p->ours, proof);
        buf_add(out, p->ours, NONCE_SIZE);
        buf_add(out, proof, MAC_SIZE);
        p->stage = 1;
        used = 5 + NONCE_SIZE;
    }
    if (p->stage == 1) {
        if (n - used < MAC_SIZE) return (long)used;
        unsigned char expected[MAC_SIZE];
        mac(secret, secret_len, "client", p->ours, p->theirs, expected);
        int ok = same(expected, data + used, MAC_SIZE);
        explicit_bzero(expected, sizeof expected);
        if (!ok) {
            buf_add(out, "\0", 1);
            snprintf(why, whylen, "the other end's proof does not match this farm's secret");
            return -1;
        }
        buf_add(out, "\1", 1);
        p->stage = 2;
        used += MAC_SIZE;
    }
    return (long)used;
}

int proof_connector_start(Proof *p, Buf *out) {
    if (proof_start(p)) return -1;
    unsigned char hello[5];
    put_u32(hello, AUTH_MAGIC);
    hello[4] = AUTH_VERSION;
    buf_add(out, hello, 5);
    buf_add(out, p->ours, NONCE_SIZE);
    return 0;
}

long proof_connector_feed(Proof *p, const unsigned char *secret, size_t secret_len, const unsigned char *data,
                          size_t n, Buf *out, char *why, size_t whylen) {
    size_t used = 0;
    if (p->stage == 0) {
        if (n < NONCE_SIZE + MAC_SIZE) return 0;
        memcpy(p->theirs, data, NONCE_SIZE);
        unsigned char expected[MAC_SIZE];
        mac(secret, secret_len, "server", p->ours, p->theirs, expected);
        int ok = same(expected, data + NONCE_SIZE, MAC_SIZE);
        if (!ok) {
            explicit_bzero(expected, sizeof expected);
            snprintf(why, whylen, "the other end does not hold this farm's secret");
            return -1;
        }
        mac(secret, secret_len, "client", p->theirs, p->ours, expected);
        buf_add(out, expected, MAC_SIZE);
        explicit_bzero(expected, sizeof expected);
        p->stage = 1;
        used = NONCE_SIZE + MAC_SIZE;
    }
    if (p->stage == 1) {
        if (n - used < 1) return (long)used;
        if (data[used] != 1) {
            snprintf(why, whylen, "the other end refused our proof of the farm secret");
            return -1;
        }
        p->stage = 2;
        used++;
    }
    return (long)used;
}

/* The secret in `path` (trailing newlines stripped), as farm.net.secret.load_secret reads it. */
int load_secret(const char *path, unsigned char *out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_msg(LOG_ERROR, "cannot read the secret file %s: %s", path, strerror(errno));
        return -1;
    }
    size_t total = 0;
    for (;;) {
        if (total == MAX_SECRET + 1) break;
        ssize_t k = read(fd, out + total, MAX_SECRET + 1 - total);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        total += (size_t)k;
    }
    struct stat info;
    int mode = fstat(fd, &info) == 0 ? (int)info.st_mode : 0;
    close(fd);
    while (total && (out[total - 1] == '\n' || out[total - 1] == '\r')) total--;
    if (total > MAX_SECRET) {
        log_msg(LOG_ERROR, "the secret file %s holds more than %d bytes", path, MAX_SECRET);
        return -1;
    }
    if (total < MIN_SECRET) {
        log_msg(LOG_ERROR,
                "the secret in %s is %zu bytes; use at least %d random bytes (e.g. `head -c 32 /dev/urandom | "
                "base64`)", path, total, MIN_SECRET);
        return -1;
    }
    if (mode & 077)
        log_msg(LOG_WARNING, "the secret file %s can be read by other users (mode %o): chmod 600 it", path,
                mode & 0777);
    *len = total;
    return 0;
}
