/* A board behind a proxy (farm/board/registration.py's ProxyDialer, docs/tracker.md): it dials out, proves the farm
 * secret where there is one, says `server:KEY -protocol=farm`, and waits for the proxy to pair a client, whose
 * connection then becomes a session; after it, the board dials again. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RETRY_FIRST 0.25
#define RETRY_LAST 2.0
#define CODE_DUPLICATE 0xFF272

void proxy_init(Proxy *p, const char *host, int port, const char *key, const unsigned char *secret, size_t secret_len) {
    memset(p, 0, sizeof *p);
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port, p->key = key, p->secret = secret, p->secret_len = secret_len;
    p->fd = -1;
    p->retry_delay = RETRY_FIRST;
}

static void drop(Proxy *p) {
    tls_free(p->tls, 0);
    p->tls = NULL;
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
    p->connected = p->greeted = p->tls_done = 0;
    p->in.len = 0;
    explicit_bzero(&p->proof, sizeof p->proof);
}

static void retry(Proxy *p, const char *why) {
    drop(p);
    log_msg(LOG_INFO, "%s (%s:%d); dialling again in %.2f s", why, p->host, p->port, p->retry_delay);
    p->next_attempt = monotonic_now() + p->retry_delay;
    p->retry_delay = p->retry_delay * 2 < RETRY_LAST ? p->retry_delay * 2 : RETRY_LAST;
}

static void dial_proxy(Proxy *p) {
    char why[600];
    p->fd = dial(p->host, p->port, "proxy", why, sizeof why);
    if (p->fd < 0) retry(p, why);
}

/* A few bytes into an almost empty socket buffer; -1 (and dial again later) if that fails. */
static int send_small(Proxy *p, const Buf *out) {
    if (!out->len) return 0;
    if (link_send(p->tls, p->fd, out->data, out->len) != (long)out->len) {
        char why[300];
        snprintf(why, sizeof why, "lost the proxy: %s", strerror(errno));
        retry(p, why);
        return -1;
    }
    p->sent += out->len;
    return 0;
}

static void hello(Proxy *p, Buf *out) {
    char text[MAX_KEY_LENGTH + 64];
    int n = snprintf(text, sizeof text, "server:%s -protocol=farm", p->key);
    unsigned char head[8];
    put_u32(head, RPC_MAGIC);
    put_u32(head + 4, (uint32_t)n);
    buf_add(out, head, 8);
    buf_add(out, text, (size_t)n);
}

static void greet(Proxy *p) {
    Buf out = {0};
    p->greeted = 1;
    p->sent = 0;
    if (p->secret) proof_connector_start(&p->proof, &out);
    else hello(p, &out);
    if (send_small(p, &out) == 0 && !p->secret)
        log_msg(LOG_INFO, "waiting at the proxy %s:%d for a client", p->host, p->port);
    buf_free(&out);
}

/* The proxy's reply in p->in: 1 once a client is paired (its key text in `client`), 0 while waiting, -1 after a
 * retry. */
int proxy_reply(Proxy *p, char *client, size_t cap, size_t *used) {
    if (p->in.len < 4) return 0;
    uint32_t code = get_u32((unsigned char *)p->in.data);
    char why[MAX_KEY_LENGTH + 200];
    if (code == CODE_MISMATCH || code == CODE_DUPLICATE) {
        snprintf(why, sizeof why, "the proxy answered the handshake with code 0x%X", code);
        retry(p, why);
        return -1;
    }
    if (code != CODE_SUCCESS && code != CODE_BUSY) {
        snprintf(why, sizeof why, "the proxy sent nonsense: unknown handshake reply code 0x%X", code);
        retry(p, why);
        return -1;
    }
    if (p->in.len < 8) return 0;
    int32_t length = (int32_t)get_u32((unsigned char *)p->in.data + 4);
    if (length < 0 || length > MAX_KEY_LENGTH || !valid_utf8((unsigned char *)p->in.data + 8,
                                                             p->in.len - 8 < (size_t)length ? 0 : (size_t)length)) {
        snprintf(why, sizeof why, "the proxy sent nonsense: a reply text of %d bytes, or not UTF-8", length);
        retry(p, why);
        return -1;
    }
    if (p->in.len < 8 + (size_t)length) return 0;
    if (code == CODE_BUSY) {
        snprintf(why, sizeof why, "the proxy answered the handshake with code 0x%X: %.*s", code, length, p->in.data + 8);
        retry(p, why);
        return -1;
    }
    snprintf(client, cap, "%.*s", length, p->in.data + 8);
    *used = 8 + (size_t)length;
    return 1;
}

short proxy_events(const Proxy *p) {
    if (p->connected && tls_on() && !p->tls_done) return p->tls_wait;
    return p->connected ? POLLIN : POLLOUT;
}

int proxy_on_event(Proxy *p, short revents, Paired *paired) {
    if (p->fd < 0) return 0;
    char why[600];
    if (!p->connected) {
        int error = 0;
        socklen_t length = sizeof error;
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error) {
            snprintf(why, sizeof why, "cannot reach the proxy: %s", strerror(error));
            retry(p, why);
            return 0;
        }
        p->connected = 1;
        p->tls_wait = POLLOUT;
        if (!tls_on()) {
            greet(p);
            return 0;
        }
    }
    if (tls_on() && !p->tls_done) { /* TLS first: the opening runs inside it */
        int status = tls_dialled(&p->tls, p->fd, p->host, &p->tls_wait, why, sizeof why);
        if (status < 0) {
            char message[800];
            snprintf(message, sizeof message, "TLS with the proxy failed: %s", why);
            retry(p, message);
            return 0;
        }
        if (!status) return 0;
        p->tls_done = 1;
        greet(p);
        return 0;
    }
    if (!(revents & (POLLIN | POLLHUP | POLLERR))) return 0;
    char data[16384]; /* a whole TLS record: what TLS holds back would wait for no event */
    long got = link_recv(p->tls, p->fd, data, sizeof data);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (got <= 0) {
        retry(p, got == 0 ? "the proxy closed the connection" : "lost the proxy");
        return 0;
    }
    buf_add(&p->in, data, (size_t)got);
    if (p->secret && p->proof.stage < 2) {
        Buf out = {0};
        long used = proof_connector_feed(&p->proof, p->secret, p->secret_len, (unsigned char *)p->in.data, p->in.len,
                                         &out, why, sizeof why);
        if (used < 0) {
            char message[800];
            snprintf(message, sizeof message, "the proxy refused us: %s", why);
            buf_free(&out);
            retry(p, message);
            return 0;
        }
        memmove(p->in.data, p->in.data + used, p->in.len - (size_t)used);
        p->in.len -= (size_t)used;
        if (p->proof.stage == 2) {
            log_msg(LOG_INFO, "waiting at the proxy %s:%d for a client", p->host, p->port);
            hello(p, &out);
        }
        int failed = send_small(p, &out);
        buf_free(&out);
        if (failed || p->proof.stage < 2) return 0;
    }
    size_t used = 0;
    if (proxy_reply(p, paired->client, sizeof paired->client, &used) != 1) return 0;
    paired->fd = p->fd;
    paired->tls = p->tls;
    p->tls = NULL;
    p->tls_done = 0;
    paired->leftover_len = p->in.len - used;
    paired->leftover = xmalloc(paired->leftover_len);
    memcpy(paired->leftover, p->in.data + used, paired->leftover_len);
    paired->sent = p->sent;
    p->fd = -1; /* the session's now */
    p->connected = p->greeted = 0;
    p->in.len = 0;
    p->in_session = 1;
    p->retry_delay = RETRY_FIRST;
    return 1;
}

void proxy_tick(Proxy *p, double now) {
    if (p->fd < 0 && !p->in_session && now >= p->next_attempt) dial_proxy(p);
}

double proxy_next_deadline(const Proxy *p) { return p->fd < 0 && !p->in_session ? p->next_attempt : 0; }

void proxy_session_ended(Proxy *p) {
    p->in_session = 0;
    p->next_attempt = monotonic_now();
}

void proxy_close(Proxy *p) {
    drop(p);
    buf_free(&p->in);
}
