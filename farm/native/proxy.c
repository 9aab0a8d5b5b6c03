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

#define CODE_DUPLICATE 0xFF272

void proxy_init(Proxy *p, const char *host, int port, const char *key, const unsigned char *secret, size_t secret_len) {
    memset(p, 0, sizeof *p);
    dial_init(&p->link, host, port);
    p->key = key, p->secret = secret, p->secret_len = secret_len;
}

static void drop(Proxy *p) {
    dial_close(&p->link);
    p->greeted = 0;
    buf_reset(&p->in);
    proof_clear(&p->proof);
}

static void retry(Proxy *p, const char *why) {
    drop(p);
    log_msg(LOG_INFO, "%s (%s:%d); dialling again in %.2f s", why, p->link.host, p->link.port, p->link.retry_delay);
    dial_backoff(&p->link);
}

static void dial_proxy(Proxy *p) {
    char why[600];
    if (dial_start(&p->link, "proxy", why, sizeof why)) retry(p, why);
}

/* A few bytes into an almost empty socket buffer; -1 (and dial again later) if that fails. */
static int send_small(Proxy *p, const Buf *out) {
    if (out->failed) { /* a message cut short would make no sense to the proxy */
        retry(p, "no memory for the messages to the proxy");
        return -1;
    }
    if (!out->len) return 0;
    if (link_send(p->link.tls, p->link.fd, out->data, out->len) != (long)out->len) {
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
        log_msg(LOG_INFO, "waiting at the proxy %s:%d for a client", p->link.host, p->link.port);
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

short proxy_events(const Proxy *p) { return dial_events(&p->link, POLLIN); }

int proxy_on_event(Proxy *p, short revents, Paired *paired) {
    if (p->link.fd < 0) return 0;
    char why[600];
    int ready = dial_progress(&p->link, revents, "proxy", why, sizeof why);
    if (ready < 0) retry(p, why);
    if (ready <= 0) return 0;
    if (!p->greeted) { /* the link just became ready: the opening starts, and the proxy answers later */
        greet(p);
        return 0;
    }
    if (!(revents & (POLLIN | POLLHUP | POLLERR))) return 0;
    char data[16384]; /* a whole TLS record: what TLS holds back would wait for no event */
    long got = link_recv(p->link.tls, p->link.fd, data, sizeof data);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (got <= 0) {
        retry(p, got == 0 ? "the proxy closed the connection" : "lost the proxy");
        return 0;
    }
    buf_add(&p->in, data, (size_t)got);
    if (p->in.failed) {
        retry(p, "no memory for what the proxy sent");
        return 0;
    }
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
            log_msg(LOG_INFO, "waiting at the proxy %s:%d for a client", p->link.host, p->link.port);
            hello(p, &out);
        }
        int failed = send_small(p, &out);
        buf_free(&out);
        if (failed || p->proof.stage < 2) return 0;
    }
    size_t used = 0;
    if (proxy_reply(p, paired->client, sizeof paired->client, &used) != 1) return 0;
    paired->fd = p->link.fd;
    paired->tls = p->link.tls;
    paired->leftover_len = p->in.len - used;
    paired->leftover = xmalloc(paired->leftover_len);
    memcpy(paired->leftover, p->in.data + used, paired->leftover_len);
    paired->sent = p->sent;
    dial_hand_over(&p->link); /* the connection is the session's now */
    dial_reset_backoff(&p->link);
    p->greeted = 0;
    buf_reset(&p->in);
    p->in_session = 1;
    return 1;
}

void proxy_tick(Proxy *p, double now) {
    if (p->link.fd < 0 && !p->in_session && now >= p->link.next_attempt) dial_proxy(p);
}

double proxy_next_deadline(const Proxy *p) { return p->link.fd < 0 && !p->in_session ? p->link.next_attempt : 0; }

void proxy_session_ended(Proxy *p) {
    p->in_session = 0;
    p->link.next_attempt = monotonic_now();
}

void proxy_close(Proxy *p) {
    drop(p);
    buf_free(&p->in);
}
