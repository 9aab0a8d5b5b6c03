/* The board's registration with a tracker (farm/board/registration.py, docs/tracker.md), without blocking the loop:
 * the opening (the proof of the farm secret where there is one, then TVM's tracker magic and its echo), then
 * UPDATE_INFO and PUT with a fresh match key whenever the board is free, and now and then GET_PENDING_MATCHKEYS: a
 * key handed out but never used is replaced. A lost tracker is reconnected with backoff. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TRACKER_MAGIC 0x2F271
#define CODE_PUT 3
#define CODE_UPDATE_INFO 5
#define CODE_GET_PENDING 7
#define MAX_MESSAGE (1u << 20)
#define POLL_PERIOD 1.0
#define UNUSED_MATCHKEY_TIMEOUT 5.0

void tracker_init(Tracker *t, const char *address, const char *key, const char *custom_addr, const char *name,
                  int port, const unsigned char *secret, size_t secret_len) {
    memset(t, 0, sizeof *t);
    const char *colon = strrchr(address, ':');
    size_t host_len = (size_t)(colon - address);
    if (address[0] == '[' && host_len > 1 && address[host_len - 1] == ']') address++, host_len -= 2;
    char host[sizeof t->link.host];
    snprintf(host, sizeof host, "%.*s", (int)host_len, address);
    dial_init(&t->link, host, atoi(colon + 1));
    t->key = key, t->custom_addr = custom_addr, t->name = name, t->board_port = port;
    t->secret = secret, t->secret_len = secret_len;
}

static void schedule_retry(Tracker *t, const char *why) {
    if (why) log_msg(LOG_INFO, "%s; retrying in %.2f s", why, t->link.retry_delay);
    dial_backoff(&t->link);
}

static void disconnect(Tracker *t) {
    dial_close(&t->link);
    t->opened = 0;
    buf_reset(&t->out);
    buf_reset(&t->in);
    t->expected_count = 0;
    if (!t->in_session) t->matchkey[0] = 0; /* a new one is offered on reconnecting */
    proof_clear(&t->proof);
}

static void lost(Tracker *t, const char *why) {
    log_msg(LOG_WARNING, "%s; reconnecting", why);
    disconnect(t);
    schedule_retry(t, NULL);
}

static void connect_now(Tracker *t) {
    char why[600];
    if (dial_start(&t->link, "tracker", why, sizeof why)) {
        schedule_retry(t, why);
        return;
    }
    buf_reset(&t->out);
    buf_reset(&t->in);
    if (t->secret) { /* the proof of the secret first; else the magic alone in its segment, as TVM's tracker wants */
        proof_connector_start(&t->proof, &t->out);
    } else {
        unsigned char magic[4];
        put_u32(magic, TRACKER_MAGIC);
        buf_add(&t->out, magic, 4);
    }
}

static void send_message(Tracker *t, const Buf *json, char kind) {
    unsigned char length[4];
    put_u32(length, (uint32_t)json->len);
    buf_add(&t->out, length, 4);
    buf_add(&t->out, json->data, json->len);
    if (t->expected_count < (int)sizeof t->expected) t->expected[t->expected_count++] = kind;
}

static void random_matchkey(Tracker *t) {
    uint64_t bits = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &bits, sizeof bits) != (ssize_t)sizeof bits) bits = (uint64_t)monotonic_ns() ^ (uint64_t)getpid();
    if (fd >= 0) close(fd);
    /* KEY:0.DIGITS, as TVM forms match keys (and Python's random() prints) */
    snprintf(t->matchkey, sizeof t->matchkey, "%s:%.17g", t->key, (double)(bits >> 11) / 9007199254740992.0);
}

/* Offers the board under a new match key (when the opening is over; else once it is). */
static void offer(Tracker *t) {
    random_matchkey(t);
    t->handed_out_since = 0;
    t->next_poll = monotonic_now() + POLL_PERIOD;
    if (!t->opened) return;
    Buf json = {0};
    buf_addf(&json, "[%d,", CODE_PUT);
    json_string(&json, t->key, strlen(t->key));
    buf_addf(&json, ",[%d,", t->board_port);
    json_string(&json, t->matchkey, strlen(t->matchkey));
    buf_adds(&json, "],");
    if (t->custom_addr) json_string(&json, t->custom_addr, strlen(t->custom_addr));
    else buf_adds(&json, "null");
    buf_adds(&json, "]");
    send_message(t, &json, 'p');
    buf_free(&json);
}

static void on_opened(Tracker *t) {
    t->opened = 1;
    dial_reset_backoff(&t->link); /* only a tracker that took us resets the backoff */
    log_msg(LOG_INFO, "registered with the tracker at %s:%d", t->link.host, t->link.port);
    Buf json = {0};
    buf_addf(&json, "[%d,{\"key\":", CODE_UPDATE_INFO);
    Buf key = {0};
    buf_addf(&key, "server:%s", t->key);
    json_string(&json, buf_str(&key), key.len);
    buf_free(&key);
    buf_adds(&json, ",\"addr\":[");
    if (t->custom_addr) json_string(&json, t->custom_addr, strlen(t->custom_addr));
    else buf_adds(&json, "null");
    buf_addf(&json, ",%d],\"protocol\":\"farm\"", t->board_port);
    if (t->name && t->name[0]) {
        buf_adds(&json, ",\"name\":");
        json_string(&json, t->name, strlen(t->name));
    }
    buf_adds(&json, "}]");
    send_message(t, &json, 'u');
    buf_free(&json);
    if (!t->in_session) offer(t);
}

static void on_pending(Tracker *t, const JValue *reply) {
    int still = !t->matchkey[0];
    for (size_t k = 0; reply->type == J_ARRAY && k < reply->len; k++) {
        const JValue *item = &reply->items[k];
        still |= item->type == J_STRING && !strcmp(item->s, t->matchkey);
    }
    double now = monotonic_now();
    if (still) t->handed_out_since = 0;
    else if (!t->handed_out_since) t->handed_out_since = now;
    else if (now - t->handed_out_since > UNUSED_MATCHKEY_TIMEOUT) {
        log_msg(LOG_INFO, "a match key handed out %.0f s ago was never used; offering the board again",
                now - t->handed_out_since);
        offer(t);
    }
}

/* The tracker's replies received into t->in, each an int32 length and JSON: those complete are taken out. */
void tracker_replies(Tracker *t) {
    size_t at = 0;
    while (t->in.len - at >= 4) {
        uint32_t length = get_u32((unsigned char *)t->in.data + at);
        if (length > MAX_MESSAGE) {
            lost(t, "the tracker sent nonsense: a message too long");
            return;
        }
        if (t->in.len - at - 4 < length) break;
        Arena *arena = arena_new();
        char why[300];
        JValue *reply = json_parse(t->in.data + at + 4, length, arena, why, sizeof why);
        char kind = t->expected_count ? t->expected[0] : '?';
        if (t->expected_count) memmove(t->expected, t->expected + 1, (size_t)--t->expected_count);
        if (!reply) {
            arena_free(arena);
            lost(t, "the tracker sent nonsense");
            return;
        }
        if (kind == 'g') on_pending(t, reply);
        else if (!(reply->type == J_INT && reply->i == 0))
            log_msg(LOG_WARNING, "the tracker answered %s with something else than success",
                    kind == 'p' ? "put" : kind == 'u' ? "update_info" : "a message it was not asked");
        arena_free(arena);
        at += 4 + length;
    }
    if (!at) return; /* nothing complete (nor, before the first bytes, any buffer to move within) */
    memmove(t->in.data, t->in.data + at, t->in.len - at);
    t->in.len -= at;
}

/* Takes the opening on with what arrived: the proof's answers, then the magic's echo. */
static void on_opening(Tracker *t) {
    char why[600], peer[300];
    snprintf(peer, sizeof peer, "the tracker at %s:%d", t->link.host, t->link.port);
    if (t->secret && t->proof.stage < 2) {
        long used = proof_connector_feed(&t->proof, t->secret, t->secret_len, (unsigned char *)t->in.data, t->in.len,
                                         &t->out, why, sizeof why);
        if (used < 0) {
            char message[1000];
            snprintf(message, sizeof message, "%s refused us: %s", peer, why);
            lost(t, message);
            return;
        }
        memmove(t->in.data, t->in.data + used, t->in.len - (size_t)used);
        t->in.len -= (size_t)used;
        if (t->proof.stage < 2) return;
        unsigned char magic[4];
        put_u32(magic, TRACKER_MAGIC);
        buf_add(&t->out, magic, 4);
    }
    if (t->in.len < 4) return;
    if (get_u32((unsigned char *)t->in.data) != TRACKER_MAGIC) {
        snprintf(why, sizeof why, "%s sent nonsense: wrong magic echoed by the tracker", peer);
        lost(t, why);
        return;
    }
    memmove(t->in.data, t->in.data + 4, t->in.len - 4);
    t->in.len -= 4;
    on_opened(t);
}

static void flush(Tracker *t) {
    if (t->out.failed) { /* a message was cut short: what follows it would make no sense to the tracker */
        lost(t, "no memory for the messages to the tracker");
        return;
    }
    while (t->link.fd >= 0 && t->link.connected && t->out.len) {
        long sent = link_send(t->link.tls, t->link.fd, t->out.data, t->out.len);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0) {
            char why[300];
            snprintf(why, sizeof why, "lost the tracker: %s", strerror(errno));
            lost(t, why);
            return;
        }
        memmove(t->out.data, t->out.data + sent, t->out.len - (size_t)sent);
        t->out.len -= (size_t)sent;
    }
}

short tracker_events(const Tracker *t) { return dial_events(&t->link, (short)(POLLIN | (t->out.len ? POLLOUT : 0))); }

void tracker_on_event(Tracker *t, short revents) {
    if (t->link.fd < 0) return;
    char why[1000];
    int ready = dial_progress(&t->link, revents, "tracker", why, sizeof why);
    if (ready < 0) lost(t, why);
    if (ready <= 0) return;
    flush(t);
    if (t->link.fd < 0 || !(revents & (POLLIN | POLLHUP | POLLERR))) return;
    char data[65536];
    long got = link_recv(t->link.tls, t->link.fd, data, sizeof data);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (got <= 0) {
        lost(t, got == 0 ? "the tracker closed the connection" : "lost the tracker");
        return;
    }
    buf_add(&t->in, data, (size_t)got);
    if (t->in.failed) { /* what came is lost: the stream cannot be read on */
        lost(t, "no memory for what the tracker sent");
        return;
    }
    if (!t->opened) on_opening(t);
    if (t->link.fd >= 0 && t->opened) tracker_replies(t);
    flush(t);
}

void tracker_tick(Tracker *t, double now) {
    if (t->link.fd < 0) {
        if (now >= t->link.next_attempt) connect_now(t);
        return;
    }
    if (t->opened && !t->in_session && now >= t->next_poll && !t->expected_count) {
        t->next_poll = now + POLL_PERIOD;
        Buf json = {0};
        buf_addf(&json, "[%d]", CODE_GET_PENDING);
        send_message(t, &json, 'g');
        buf_free(&json);
        flush(t);
    }
}

double tracker_next_deadline(const Tracker *t) {
    if (t->link.fd < 0) return t->link.next_attempt;
    if (t->opened && !t->in_session && !t->expected_count) return t->next_poll;
    return 0; /* nothing to do until the tracker answers or the session ends */
}

void tracker_session_started(Tracker *t) {
    t->in_session = 1;
    t->matchkey[0] = 0;
}

void tracker_session_ended(Tracker *t) {
    t->in_session = 0;
    offer(t);
    flush(t);
}

int tracker_accepts(const Tracker *t, const char *client_key) {
    return t->matchkey[0] && !strcmp(client_key, t->matchkey);
}

void tracker_close(Tracker *t) {
    disconnect(t);
    buf_free(&t->out);
    buf_free(&t->in);
}
