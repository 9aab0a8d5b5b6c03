/* The farm's frames (docs/protocol.md §2) on a blocking connection, and the status block shared with the daemon. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

void header_encode(unsigned char out[FRAME_HEADER], uint8_t op, uint32_t request_id, uint32_t meta_len,
                   uint64_t size) {
    out[0] = 'R', out[1] = 'D', out[2] = 1, out[3] = op;
    put_u32(out + 4, request_id);
    put_u32(out + 8, meta_len);
    put_u64(out + 12, size);
}

/* Every length is checked here, before any buffer is sized for it. */
int header_decode(const unsigned char in[FRAME_HEADER], Header *h, uint64_t max_payload, char *why, size_t whylen) {
    h->op = in[3];
    h->request_id = get_u32(in + 4);
    h->meta_len = get_u32(in + 8);
    h->size = get_u64(in + 12);
    if (in[0] != 'R' || in[1] != 'D') {
        snprintf(why, whylen, "bad frame magic %02x%02x (expected 'RD')", in[0], in[1]);
        return -1;
    }
    if (in[2] != 1) {
        snprintf(why, whylen, "unsupported frame version %d (this side speaks 1)", in[2]);
        return -1;
    }
    if (h->meta_len > MAX_META) {
        snprintf(why, whylen, "frame metadata of %u bytes exceeds the limit of %u", h->meta_len, MAX_META);
        return -1;
    }
    if (h->size > max_payload) {
        snprintf(why, whylen, "frame payload of %llu bytes exceeds the limit of %llu bytes (max message size)",
                 (unsigned long long)h->size, (unsigned long long)max_payload);
        return -1;
    }
    return 0;
}

/* Exactly `n` bytes: first those already received ahead; a large rest straight from the socket into `dst`, a
 * small one through the buffer, which then keeps what came with it (a call's header and payload in one read). */
int conn_read(Conn *c, void *dst, size_t n) {
    unsigned char *out = dst;
    while (n) {
        size_t ahead = c->end - c->start;
        if (ahead) {
            size_t take = ahead < n ? ahead : n;
            memcpy(out, c->buf + c->start, take);
            c->start += take, out += take, n -= take;
            if (c->start == c->end) c->start = c->end = 0;
            continue;
        }
        int direct = n >= c->cap / 4;
        ssize_t got = direct ? recv(c->fd, out, n, 0) : recv(c->fd, c->buf, c->cap, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        if (direct) out += got, n -= (size_t)got;
        else c->start = 0, c->end = (size_t)got;
    }
    return 0;
}

static int send_all(int fd, struct iovec *iov, int count) {
    while (count) {
        struct msghdr message = {.msg_iov = iov, .msg_iovlen = (size_t)count};
        ssize_t sent = sendmsg(fd, &message, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0) return -1;
        while (count && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++, count--;
        }
        if (count) {
            iov->iov_base = (char *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    return 0;
}

int conn_send(Conn *c, const void *a, size_t alen, const void *b, size_t blen) {
    struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
    c->sent += alen + blen;
    return send_all(c->fd, iov, blen ? 2 : 1);
}

int send_frame(int fd, uint8_t op, uint32_t request_id, const char *meta, size_t meta_len, const void *payload,
               uint64_t size) {
    unsigned char head[FRAME_HEADER];
    header_encode(head, op, request_id, (uint32_t)meta_len, size);
    struct iovec iov[3] = {{head, FRAME_HEADER}, {(void *)meta, meta_len}, {(void *)payload, (size_t)size}};
    return send_all(fd, iov, size ? 3 : 2);
}

/* The status block, laid out as farm.board.session.SessionStatus: state u8 at 0, the byte count the connection
 * reaches when the reply being sent is complete u64 at 8, the activity's length u16 at 16 and its text at 18. */
void status_set(unsigned char *status, int state) { __atomic_store_n(status, (unsigned char)state, __ATOMIC_SEQ_CST); }

void status_running(unsigned char *status, const char *activity) {
    size_t n = strlen(activity);
    if (n > STATUS_SIZE - STATUS_TEXT) n = STATUS_SIZE - STATUS_TEXT;
    memcpy(status + STATUS_TEXT, activity, n);
    status[16] = (unsigned char)n, status[17] = (unsigned char)(n >> 8);
    status_set(status, ST_RUNNING);
}

void status_sending(unsigned char *status, uint64_t reply_end) {
    put_u64(status + 8, reply_end);
    status_set(status, ST_SENDING);
}

void status_activity(const unsigned char *status, char *out, size_t cap) {
    int state = __atomic_load_n(status, __ATOMIC_SEQ_CST);
    if (state == ST_SENDING) snprintf(out, cap, "sending a reply");
    else if (state != ST_RUNNING) snprintf(out, cap, "waiting for a request");
    else {
        size_t n = get_u16(status + 16);
        if (n > STATUS_SIZE - STATUS_TEXT) n = STATUS_SIZE - STATUS_TEXT;
        if (n >= cap) n = cap - 1;
        memcpy(out, status + STATUS_TEXT, n);
        out[n] = 0;
    }
}
