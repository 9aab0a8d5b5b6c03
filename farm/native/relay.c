/* The daemon's relay between a client's TLS connection and the session process, as farm/board/relay.py: the
 * session process never holds the TLS state (nor the key), and the daemon can still tell the client how a session
 * that died mid-record ended. Plain bytes go over a socket pair, with a bounded buffer each way. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Most bytes held for either side before the relay stops reading from the other. */
#define BUFFER_LIMIT (4u << 20)
#define CHUNK (256u << 10)

static size_t held(const Queue *q) { return q->end - q->start; }

/* Room for `n` more bytes at the end: 0, or -1 when memory is short. */
static int make_room(Queue *q, size_t n) {
    if (q->start == q->end) q->start = q->end = 0;
    if (q->cap - q->end >= n) return 0;
    if (q->start) {
        memmove(q->data, q->data + q->start, held(q));
        q->end -= q->start;
        q->start = 0;
        if (q->cap - q->end >= n) return 0;
    }
    size_t cap = q->end + n > BUFFER_LIMIT + CHUNK ? q->end + n : BUFFER_LIMIT + CHUNK;
    unsigned char *grown = realloc(q->data, cap);
    if (!grown) return -1;
    q->data = grown;
    q->cap = cap;
    return 0;
}

static void queue_free(Queue *q) {
    free(q->data);
    memset(q, 0, sizeof *q);
}

int relay_start(Relay *r, TlsConn *tls, int outer, int *child_end) {
    int pair[2];
    memset(r, 0, sizeof *r);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair)) return -1;
    int size = (int)BUFFER_LIMIT; /* fewer wakeups of either process per array (capped by the system) */
    for (int k = 0; k < 2; k++) {
        setsockopt(pair[k], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(pair[k], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    r->tls = tls, r->outer = outer, r->inner = pair[0];
    r->read_wait = POLLIN, r->write_wait = POLLOUT;
    *child_end = pair[1];
    int flags = fcntl(outer, F_GETFL);
    fcntl(outer, F_SETFL, flags | O_NONBLOCK);
    fcntl(r->inner, F_SETFL, fcntl(r->inner, F_GETFL) | O_NONBLOCK);
    return 0;
}

static int reads_client(const Relay *r) { return !r->client_gone && held(&r->to_child) < BUFFER_LIMIT; }
static int writes_client(const Relay *r) { return !r->client_gone && held(&r->to_client); }
static int reads_child(const Relay *r) { return !r->child_done && held(&r->to_client) < BUFFER_LIMIT; }
static int writes_child(const Relay *r) { return !r->inner_shut && held(&r->to_child); }

static void take_from_child(Relay *r, size_t n) {
    r->from_child += n;
    if (r->client_gone) r->to_client.end -= n; /* dropped: nobody is left to read it */
}

/* Reads the session process (into to_client): whether it moved bytes. */
static int read_child(Relay *r) {
    int moved = 0;
    while (reads_child(r)) {
        if (make_room(&r->to_client, CHUNK)) break;
        ssize_t got = recv(r->inner, r->to_client.data + r->to_client.end, CHUNK, MSG_DONTWAIT);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        moved = 1;
        if (got <= 0) {
            r->child_done = 1;
            break;
        }
        r->to_client.end += (size_t)got;
        take_from_child(r, (size_t)got);
    }
    return moved;
}

static int pump_to_child(Relay *r) {
    int moved = 0;
    while (reads_client(r)) {
        if (make_room(&r->to_child, CHUNK)) break;
        short wait = POLLIN;
        long got = tls_read(r->tls, r->to_child.data + r->to_child.end, CHUNK, &wait);
        r->read_wait = got == -2 ? wait : POLLIN;
        if (got == -2) break;
        moved = 1;
        if (got <= 0) {
            log_msg(LOG_DEBUG, "the client's TLS connection ended");
            r->client_gone = 1;
            break;
        }
        r->to_child.end += (size_t)got;
    }
    while (writes_child(r)) {
        ssize_t sent = send(r->inner, r->to_child.data + r->to_child.start, held(&r->to_child),
                            MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (sent < 0) sent = (ssize_t)held(&r->to_child); /* the session process is gone: what it did not read too */
        r->to_child.start += (size_t)sent;
        moved = moved || sent > 0;
    }
    if (r->client_gone && !held(&r->to_child) && !r->inner_shut) {
        r->inner_shut = 1; /* the session process sees the end of the stream */
        shutdown(r->inner, SHUT_WR);
    }
    return moved;
}

static int pump_to_client(Relay *r) {
    int moved = read_child(r);
    while (writes_client(r)) {
        short wait = POLLOUT;
        long sent = tls_write(r->tls, r->to_client.data + r->to_client.start, held(&r->to_client), &wait);
        r->write_wait = sent == -2 ? wait : POLLOUT;
        if (sent == -2) break;
        if (sent < 0) {
            log_msg(LOG_INFO, "the client's TLS connection broke");
            r->client_gone = 1;
            r->to_client.start = r->to_client.end = 0;
            return 1;
        }
        r->to_client.start += (size_t)sent;
        moved = 1;
    }
    return moved;
}

void relay_pump(Relay *r) {
    while (pump_to_child(r) | pump_to_client(r)) {
    }
}

short relay_outer_events(const Relay *r) {
    return (short)((reads_client(r) ? r->read_wait : 0) | (writes_client(r) ? r->write_wait : 0));
}

short relay_inner_events(const Relay *r) {
    return (short)((reads_child(r) ? POLLIN : 0) | (writes_child(r) ? POLLOUT : 0));
}

void relay_drain_child(Relay *r) {
    while (!r->child_done) {
        if (make_room(&r->to_client, CHUNK)) break;
        ssize_t got = recv(r->inner, r->to_client.data + r->to_client.end, CHUNK, MSG_DONTWAIT);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) { /* the end, or nothing more: its writers are gone */
            r->child_done = 1;
            break;
        }
        r->to_client.end += (size_t)got;
        take_from_child(r, (size_t)got);
    }
}

void relay_finish(Relay *r, const void *last, size_t n, double timeout) {
    if (n && !r->client_gone && make_room(&r->to_client, n) == 0) {
        memcpy(r->to_client.data + r->to_client.end, last, n);
        r->to_client.end += n;
    }
    double deadline = monotonic_now() + timeout;
    while (writes_client(r)) {
        short wait = 0;
        long sent = tls_write(r->tls, r->to_client.data + r->to_client.start, held(&r->to_client), &wait);
        if (sent >= 0) {
            r->to_client.start += (size_t)sent;
            continue;
        }
        double left = deadline - monotonic_now();
        if (sent == -1 || left <= 0) {
            log_msg(LOG_INFO, "could not tell the client: %s", sent == -1 ? "the connection broke" : "timed out");
            break;
        }
        struct pollfd ready = {r->outer, wait, 0};
        poll(&ready, 1, (int)(left * 1000) + 1);
    }
    if (!r->client_gone) tls_free(r->tls, 1);
    else tls_free(r->tls, 0);
    r->tls = NULL;
    close(r->outer);
    close(r->inner);
    r->outer = r->inner = -1;
    queue_free(&r->to_child);
    queue_free(&r->to_client);
}
