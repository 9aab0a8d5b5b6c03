/* An outgoing link of the board, to its tracker or to its proxy: dialled without blocking, TLS first where the
 * board has TLS, dialled again after a backoff that doubles up to a cap (farm/board/registration.py's links). */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RETRY_FIRST 0.25
#define RETRY_LAST 2.0

void dial_init(Dial *d, const char *host, int port) {
    memset(d, 0, sizeof *d);
    snprintf(d->host, sizeof d->host, "%s", host);
    d->port = port;
    d->fd = -1;
    d->retry_delay = RETRY_FIRST;
}

int dial_start(Dial *d, const char *what, char *why, size_t whylen) {
    d->fd = dial(d->host, d->port, what, why, whylen);
    return d->fd < 0 ? -1 : 0;
}

void dial_close(Dial *d) {
    tls_free(d->tls, 0);
    if (d->fd >= 0) close(d->fd);
    dial_hand_over(d);
}

void dial_hand_over(Dial *d) {
    d->fd = -1;
    d->tls = NULL;
    d->connected = d->tls_done = 0;
}

void dial_backoff(Dial *d) {
    d->next_attempt = monotonic_now() + d->retry_delay;
    d->retry_delay = d->retry_delay * 2 < RETRY_LAST ? d->retry_delay * 2 : RETRY_LAST;
}

void dial_reset_backoff(Dial *d) { d->retry_delay = RETRY_FIRST; }

short dial_events(const Dial *d, short ready) {
    if (!d->connected) return POLLOUT;
    return tls_on() && !d->tls_done ? d->tls_wait : ready;
}

int dial_progress(Dial *d, short revents, const char *what, char *why, size_t whylen) {
    if (!d->connected) {
        if (!(revents & (POLLOUT | POLLERR | POLLHUP))) return 0;
        int error = 0;
        socklen_t length = sizeof error;
        getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error) {
            snprintf(why, whylen, "cannot reach the %s: %s", what, strerror(error));
            return -1;
        }
        d->connected = 1;
        d->tls_wait = POLLOUT;
    }
    if (tls_on() && !d->tls_done) { /* TLS first: the opening runs inside it */
        char reason[600];
        int status = tls_dialled(&d->tls, d->fd, d->host, &d->tls_wait, reason, sizeof reason);
        if (status < 0) {
            snprintf(why, whylen, "TLS with the %s at %s:%d failed: %s", what, d->host, d->port, reason);
            return -1;
        }
        if (!status) return 0;
        d->tls_done = 1;
    }
    return 1;
}
