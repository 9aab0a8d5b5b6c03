/* The daemon: listens, runs each connection's opening (the farm-secret proof, TVM's hello) without blocking,
 * hands each admitted connection to the session spawner (spawner.c), which forks its session process, gives each
 * session a cgroup of its own where the board has them (cgroup.c), and tells the client how the session ended
 * (SESSION_END, docs/protocol.md §3.4), as farm/board/daemon.py, admission.py and supervisor.py do. One session at
 * a time. */
#define _GNU_SOURCE
#include "board.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* The proof, the longest hello, and what may come after it in the same reads. */
#define OPENING_BUFFER (5 + NONCE_SIZE + MAC_SIZE + 8 + MAX_KEY_LENGTH + 8192)
#define QUOTA_CHECK_PERIOD 1.0
#define NOTIFY_TIMEOUT 2
#define REPLY_TIMEOUT 5
#define ACCEPT_PAUSE 1.0
/* Seconds a stopping daemon waits for the spawner to report the end of the session it killed. */
#define STOP_TIMEOUT 5
/* The poll set: the wake-up pipe, the listener, the tracker link, the spawner, under TLS the relay's two
 * connections, then the pending openings. */
#define RELAY_OUTER 4
#define RELAY_INNER 5
#define FIRST_PENDING 6

typedef struct {
    int fd;
    char peer[80];
    char address[64]; /* counted per address until it proves itself */
    double deadline;
    int counted;
    Proof proof;
    unsigned char buf[OPENING_BUFFER];
    size_t len;
    uint64_t sent;
    TlsConn *tls; /* under TLS: the connection's, once it began its TLS handshake */
    int tls_done;
    short events; /* what the opening waits for */
} Pending;

typedef struct {
    pid_t pid;
    int fd;
    char peer[80];
    char directory[4200];
    double started, started_at, deadline;
    char timeout_reason[200];
    int timed_out, abandoned, over_files;
    uint64_t over_quota, oom_kills;
    double next_quota_check;
    char cgroup[64];          /* the session's cgroup ("": none) */
    char start_failure[1024]; /* why the spawner could not start the session process */
    int relayed;              /* under TLS: the daemon relays between fd and the session process */
    Relay relay;
    uint64_t sent_before;     /* bytes sent on the connection before the session process took over */
    int64_t counted_beyond;   /* what bytes_written counts beyond the bytes written: the SYN of a connection the
                                 board dialled (through a proxy), counted as acknowledged; 0 on one it accepted */
} Active;

typedef struct {
    const Options *o;
    unsigned char *secret;
    size_t secret_len;
    int listener, port;
    double accept_paused_until;
    char name[300];
    char work_dir[4096];
    int own_work_dir;
    Pending **pending;
    int pending_count;
    Active active;
    int busy;
    Tracker tracker; /* with --tracker: how clients find the board */
    int has_tracker;
    Proxy proxy; /* with --through-proxy: where clients come from */
    int has_proxy;
    unsigned char *status; /* shared with the session process */
    Spawner *spawner;      /* forks the sessions */
    int spawner_gone;      /* then the daemon stops, exit code 1 */
    Confinement *confinement;
    char next_cgroup[64]; /* made ahead for the next session, whose process waits in it ("": none) */
    double drop_at;       /* when to drop the code pages, if still idle then (0: done) */
} Board;

static int wake[2] = {-1, -1};
static int work_dir_lock = -1; /* held while the daemon runs: see claim_work_dir */
static volatile sig_atomic_t stop_signal;

static void on_signal(int number) {
    int saved = errno;
    if (number == SIGTERM || number == SIGINT) stop_signal = number;
    ssize_t ignored = write(wake[1], "", 1);
    (void)ignored;
    errno = saved;
}

static int listen_on(Board *b) {
    const Options *o = b->o;
    int first = o->port, last = o->port && o->port_end > o->port ? (o->port_end < 65536 ? o->port_end : 65536) - 1
                                                                 : o->port;
    struct addrinfo hints = {.ai_family = strchr(o->host, ':') ? AF_INET6 : AF_INET, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *found;
    int error = getaddrinfo(o->host, NULL, &hints, &found);
    if (error) {
        log_msg(LOG_ERROR, "cannot listen: %s: %s", o->host, gai_strerror(error));
        return -1;
    }
    int last_errno = 0;
    for (int port = first; port <= last; port++) {
        int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP), one = 1;
        if (fd < 0) break;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        struct sockaddr_storage address;
        memcpy(&address, found->ai_addr, found->ai_addrlen);
        ((struct sockaddr_in *)&address)->sin_port = htons((uint16_t)port); /* same place in sockaddr_in6 */
        if (bind(fd, (struct sockaddr *)&address, found->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            socklen_t length = sizeof address;
            getsockname(fd, (struct sockaddr *)&address, &length);
            b->port = ntohs(((struct sockaddr_in *)&address)->sin_port);
            b->listener = fd;
            fcntl(fd, F_SETFL, O_NONBLOCK);
            freeaddrinfo(found);
            return 0;
        }
        last_errno = errno;
        close(fd);
    }
    freeaddrinfo(found);
    log_msg(LOG_ERROR, "cannot listen: no free port in %d..%d on %s (last error: %s)", first, last, o->host,
            strerror(last_errno));
    return -1;
}

/* --- the opening of each connection -------------------------------------------------------- */

static int counted_from(Board *b, const char *address) {
    int n = 0;
    for (int k = 0; k < b->pending_count; k++) n += b->pending[k]->counted && !strcmp(b->pending[k]->address, address);
    return n;
}

static int counted_all(Board *b) {
    int n = 0;
    for (int k = 0; k < b->pending_count; k++) n += b->pending[k]->counted;
    return n;
}

static void drop_pending(Board *b, int index, int close_it) {
    Pending *p = b->pending[index];
    if (close_it) {
        tls_free(p->tls, 0);
        close(p->fd);
    }
    b->pending[index] = b->pending[--b->pending_count];
    proof_clear(&p->proof);
    free(p);
}

static void accept_one(Board *b) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    int fd = accept4(b->listener, (struct sockaddr *)&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            log_msg(LOG_WARNING, "cannot accept connections (%s); pausing for a second", strerror(errno));
            b->accept_paused_until = monotonic_now() + ACCEPT_PAUSE;
        }
        return;
    }
    char host[64] = "?";
    int port = 0;
    if (address.ss_family == AF_INET6) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        port = ntohs(v6->sin6_port);
    } else {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
    }
    if (counted_all(b) >= b->o->max_unproven || counted_from(b, host) >= b->o->max_unproven_per_address) {
        log_msg(LOG_WARNING, "refusing %s:%d: too many connections are in their handshake", host, port);
        close(fd);
        return;
    }
    Pending *p = calloc(1, sizeof(Pending));
    Pending **grown = p ? realloc(b->pending, sizeof(Pending *) * (size_t)(b->pending_count + 1)) : NULL;
    if (!grown || (b->secret && proof_start(&p->proof))) {
        free(p);
        close(fd);
        return;
    }
    b->pending = grown;
    p->fd = fd;
    p->events = POLLIN;
    p->counted = 1;
    snprintf(p->peer, sizeof p->peer, "%s:%d", host, port);
    snprintf(p->address, sizeof p->address, "%s", host);
    p->deadline = monotonic_now() + b->o->handshake_timeout;
    b->pending[b->pending_count++] = p;
}

static int send_now(Pending *p, const Buf *out) {
    if (!out->len) return 0;
    long sent = link_send(p->tls, p->fd, out->data, out->len);
    return sent == (long)out->len ? 0 : -1;
}

static void tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

static void set_send_timeout(int fd, int seconds) {
    struct timeval timeout = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
}

static int start_session(Board *b, int fd, TlsConn *tls, const char *peer, double asked,
                         const unsigned char *leftover, size_t leftover_len, uint64_t sent);

static void close_client(int fd, TlsConn *tls) {
    tls_free(tls, 1);
    close(fd);
}

static void admit(Board *b, int index, const Hello *hello, size_t used) {
    Pending *p = b->pending[index];
    int matches = !strcmp(hello->role, "client") &&
                  (b->has_tracker ? tracker_accepts(&b->tracker, hello->key) /* only whom the tracker sent */
                                  : !hello->key[0] || !b->o->key[0] || !strcmp(hello->key, b->o->key));
    Buf reply = {0}, text = {0};
    uint32_t code = CODE_SUCCESS;
    if (!matches) {
        log_msg(LOG_WARNING, "key mismatch from %s: %s:%s (this board: '%s')", p->peer, hello->role, hello->key,
                b->o->key);
        code = CODE_MISMATCH;
    } else if (b->busy) {
        log_msg(LOG_INFO, "refusing %s: busy", p->peer);
        code = CODE_BUSY;
        buf_addf(&text, "board '%s' at %s:%d is busy: it serves a session from %s since %.1f s", b->o->key,
                 b->o->host, b->port, b->active.peer, monotonic_now() - b->active.started);
    } else {
        buf_addf(&text, "server:%s", b->o->key);
    }
    reply_encode(&reply, code, buf_str(&text));
    int fd = p->fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    set_send_timeout(fd, REPLY_TIMEOUT);
    size_t rest_len = p->len - used;
    unsigned char *rest = xmalloc(rest_len);
    memcpy(rest, p->buf + used, rest_len);
    uint64_t sent = p->sent + reply.len;
    char peer[80];
    snprintf(peer, sizeof peer, "%s", p->peer);
    TlsConn *tls = p->tls;
    p->tls = NULL;
    drop_pending(b, index, 0); /* before the fork: the session process closes what is pending */
    int delivered = link_send_all(tls, fd, reply.data, reply.len) == 0;
    if (!delivered) log_msg(LOG_INFO, "handshake reply to %s failed: %s", peer, strerror(errno));
    if (!delivered || code != CODE_SUCCESS) close_client(fd, tls);
    else {
        set_send_timeout(fd, 0);
        tune(fd);
        start_session(b, fd, tls, peer, hello->timeout, rest, rest_len, sent);
    }
    buf_free(&reply);
    buf_free(&text);
    free(rest);
}

/* Under TLS: refuses a peer that does not begin TLS, naming what it spoke, else takes its TLS handshake a step on;
 * whether it is done (and bytes may follow). */
static int opening_tls(Board *b, int index) {
    Pending *p = b->pending[index];
    char why[600];
    if (!p->tls) {
        unsigned char first[5];
        ssize_t got = recv(p->fd, first, sizeof first, MSG_PEEK);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
        if (got < 0) log_msg(LOG_INFO, "handshake from %s failed: %s", p->peer, strerror(errno));
        if (got <= 0 || !tls_looks_like(first, (size_t)got)) {
            if (got > 0) {
                spoke(first, (size_t)got, why, sizeof why);
                log_msg(LOG_WARNING, "refused %s: it spoke %s, not TLS", p->peer, why);
            }
            drop_pending(b, index, 1);
            return 0;
        }
        if (!(p->tls = tls_new(p->fd, 1, NULL))) {
            log_msg(LOG_INFO, "refused %s: cannot start TLS", p->peer);
            drop_pending(b, index, 1);
            return 0;
        }
    }
    int status = tls_handshake(p->tls, &p->events, why, sizeof why);
    if (status < 0) {
        log_msg(LOG_WARNING, "refused %s: TLS handshake failed: %s", p->peer, why);
        drop_pending(b, index, 1);
        return 0;
    }
    if (status == 0) return 0;
    p->tls_done = 1;
    p->events = POLLIN;
    return 1;
}

/* What arrived on a pending connection, through TLS where it has it (all TLS holds, up to the buffer's end). */
static ssize_t opening_recv(Pending *p) {
    if (!p->tls) return recv(p->fd, p->buf + p->len, sizeof p->buf - p->len, 0);
    size_t got = 0;
    while (p->len + got < sizeof p->buf) {
        short events = POLLIN;
        long n = tls_read(p->tls, p->buf + p->len + got, sizeof p->buf - p->len - got, &events);
        p->events = events;
        if (n > 0) got += (size_t)n;
        else if (n == -2 && got) break;
        else if (n == -2) {
            errno = EAGAIN;
            return -1;
        } else return got ? (ssize_t)got : 0; /* its end, or broken */
    }
    p->events = POLLIN;
    return (ssize_t)got;
}

/* Takes the opening of pending connection `index` on with what arrived. */
static void on_opening_data(Board *b, int index) {
    Pending *p = b->pending[index];
    if (tls_on() && !p->tls_done && !opening_tls(b, index)) return;
    ssize_t got = opening_recv(p);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (got <= 0) {
        log_msg(LOG_INFO, "%s closed the connection during the handshake", p->peer);
        drop_pending(b, index, 1);
        return;
    }
    p->len += (size_t)got;
    char why[8400];
    if (b->secret && p->proof.stage < 2) {
        Buf out = {0};
        long used = proof_feed(&p->proof, b->secret, b->secret_len, p->buf, p->len, &out, why, sizeof why);
        int delivered = send_now(p, &out) == 0;
        p->sent += out.len;
        buf_free(&out);
        if (used < 0) {
            log_msg(LOG_WARNING, "refused %s: %s", p->peer, why);
            drop_pending(b, index, 1);
            return;
        }
        if (!delivered) {
            log_msg(LOG_INFO, "%s stopped reading during authentication; closing", p->peer);
            drop_pending(b, index, 1);
            return;
        }
        memmove(p->buf, p->buf + used, p->len - (size_t)used);
        p->len -= (size_t)used;
        if (p->proof.stage < 2) return;
        log_msg(LOG_DEBUG, "%s proved it holds the farm secret", p->peer);
        p->counted = 0;
    }
    Hello *hello = malloc(sizeof(Hello));
    size_t used = 0;
    int status = hello ? hello_parse(p->buf, p->len, hello, &used, why, sizeof why) : -1;
    if (status < 0) {
        log_msg(LOG_WARNING, "bad handshake from %s: %s; closing", p->peer, hello ? why : "out of memory");
        drop_pending(b, index, 1);
    } else if (status == 1) {
        admit(b, index, hello, used);
    } else if (p->len == sizeof p->buf) {
        drop_pending(b, index, 1);
    }
    free(hello);
}

/* --- sessions -------------------------------------------------------------------------------- */

static void session_time(Board *b, double asked) {
    double limit = b->o->max_session_time;
    Active *a = &b->active;
    a->deadline = 0;
    if (asked > 0 && (limit <= 0 || asked <= limit)) {
        a->deadline = a->started + asked;
        snprintf(a->timeout_reason, sizeof a->timeout_reason, "the session timeout of %g s", asked);
    } else if (limit > 0) {
        a->deadline = a->started + limit;
        char wanted[64] = "asked for none";
        if (asked > 0) snprintf(wanted, sizeof wanted, "asked for %g s", asked);
        snprintf(a->timeout_reason, sizeof a->timeout_reason,
                 "the board's maximum session time of %g s (--max-session-time; the client %s)", limit, wanted);
    }
}

/* Has the spawner fork the next session's process now, in a cgroup made for it here: the slow part of a session's
 * start (the move into its cgroup) is then done before its client comes (spawner.c). */
static void stand_by(Board *b) {
    if (b->spawner_gone) return;
    if (b->confinement->count && !b->next_cgroup[0] &&
        cgroup_session(b->confinement, b->next_cgroup, sizeof b->next_cgroup)) {
        log_msg(LOG_ERROR, "cannot make a cgroup for the next session ahead of it: %s", strerror(errno));
        b->next_cgroup[0] = 0;
        return;
    }
    if (spawner_standby(b->spawner, b->next_cgroup)) b->spawner_gone = 1;
}

/* Bytes written to a TCP socket so far by anyone holding it: acknowledged plus queued (Linux); -1 if unknown. */
static int64_t bytes_written(int fd) {
    unsigned char info[256] = {0};
    socklen_t length = sizeof info;
    int queued = 0;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &length) || length < 128 || ioctl(fd, TIOCOUTQ, &queued))
        return -1;
    uint64_t acked;
    memcpy(&acked, info + 120, sizeof acked); /* tcpi_bytes_acked */
    return (int64_t)acked + queued;
}

/* Starts a session on `fd`: 0, or -1 (logged; the connection closed). */
static int start_session(Board *b, int fd, TlsConn *tls, const char *peer, double asked,
                         const unsigned char *leftover, size_t leftover_len, uint64_t sent) {
    Active *a = &b->active;
    memset(a, 0, sizeof *a);
    a->sent_before = sent;
    snprintf(a->directory, sizeof a->directory, "%s/session-XXXXXX", b->work_dir);
    if (!mkdtemp(a->directory)) {
        log_msg(LOG_ERROR, "cannot make a session directory for %s: %s", peer, strerror(errno));
        close_client(fd, tls);
        return -1;
    }
    if (b->o->user.do_switch && chown(a->directory, b->o->user.uid, b->o->user.gid)) {
        log_msg(LOG_ERROR, "cannot give the session directory to %s: %s", b->o->user.name, strerror(errno));
        rmdir(a->directory);
        close_client(fd, tls);
        return -1;
    }
    snprintf(a->peer, sizeof a->peer, "%s", peer);
    a->fd = fd;
    int64_t written = tls ? -1 : bytes_written(fd);
    a->counted_beyond = written >= 0 ? written - (int64_t)sent : 0;
    a->started = monotonic_now();
    a->started_at = wall_now();
    a->next_quota_check = a->started + QUOTA_CHECK_PERIOD;
    session_time(b, asked);
    if (b->next_cgroup[0]) { /* the standby waits in it */
        snprintf(a->cgroup, sizeof a->cgroup, "%s", b->next_cgroup);
        b->next_cgroup[0] = 0;
    } else if (b->confinement->count && cgroup_session(b->confinement, a->cgroup, sizeof a->cgroup)) {
        log_msg(LOG_ERROR, "cannot make a cgroup for the session of %s: %s", peer, strerror(errno));
        remove_tree(a->directory);
        close_client(fd, tls);
        return -1;
    }
    memset(b->status, 0, STATUS_SIZE);
    SessionOrder order = {a->directory, b->o->key, b->name, b->o->max_message_size, b->o->session_quota,
                          b->status, leftover, leftover_len, sent};
    int child_end = fd; /* under TLS the session process gets the relay's end of a socket pair */
    if (tls && relay_start(&a->relay, tls, fd, &child_end)) {
        log_msg(LOG_ERROR, "cannot relay the session of %s: %s", peer, strerror(errno));
        if (a->cgroup[0]) cgroup_remove(b->confinement, a->cgroup);
        remove_tree(a->directory);
        close_client(fd, tls);
        return -1;
    }
    int ordered = spawner_order(b->spawner, child_end, &order, a->cgroup), order_errno = errno;
    if (tls) close(child_end); /* the session process has its own copy now */
    if (ordered) {
        log_msg(LOG_ERROR, "the session spawner cannot take the session of %s: %s", peer, strerror(order_errno));
        if (a->cgroup[0]) cgroup_remove(b->confinement, a->cgroup);
        remove_tree(a->directory);
        if (tls) relay_finish(&a->relay, NULL, 0, 0);
        else close(fd);
        if (order_errno != EMSGSIZE) b->spawner_gone = 1;
        return -1;
    }
    b->busy = 1;
    if (tls) {
        a->relayed = 1;
        relay_pump(&a->relay);
    }
    if (b->has_tracker) tracker_session_started(&b->tracker);
    return 0;
}

/* The proxy paired a client with the board: its key text carries the client's options. */
static void paired_by_proxy(Board *b, Paired *paired) {
    Hello *hello = xmalloc(sizeof(Hello));
    char why[8400];
    if (key_parse(paired->client, strlen(paired->client), hello, why, sizeof why)) {
        log_msg(LOG_WARNING, "the proxy passed on a bad client key '%s': %s", paired->client, why);
        close_client(paired->fd, paired->tls);
        proxy_session_ended(&b->proxy); /* dial again */
    } else {
        tune(paired->fd);
        fcntl(paired->fd, F_SETFL, fcntl(paired->fd, F_GETFL) & ~O_NONBLOCK);
        if (start_session(b, paired->fd, paired->tls, "a client of the proxy", hello->timeout, paired->leftover,
                          paired->leftover_len, paired->sent))
            proxy_session_ended(&b->proxy);
    }
    free(hello);
    free(paired->leftover);
}

static int reply_cut_short(Board *b) {
    if (__atomic_load_n(b->status, __ATOMIC_SEQ_CST) != ST_SENDING) return 0;
    const Active *a = &b->active; /* under TLS, what it wrote to the relay reaches the client before anything */
    int64_t written = a->relayed ? (int64_t)(a->sent_before + a->relay.from_child) : bytes_written(a->fd);
    if (!a->relayed && written >= 0) written -= a->counted_beyond;
    return written < 0 || (uint64_t)written < get_u64(b->status + 8);
}

static void megabytes(Buf *out, uint64_t size) {
    if (size % (1 << 20)) buf_addf(out, "%.1f", (double)size / (1 << 20));
    else buf_addf(out, "%llu", (unsigned long long)(size >> 20));
}

static void end_message(Board *b, int wait_status, const char *reason, Buf *out) {
    Active *a = &b->active;
    char how[80], activity[STATUS_SIZE];
    if (WIFSIGNALED(wait_status))
        snprintf(how, sizeof how, "was killed by signal %d (%s)", WTERMSIG(wait_status), signal_name(WTERMSIG(wait_status)));
    else snprintf(how, sizeof how, "exited with code %d", WEXITSTATUS(wait_status));
    status_activity(b->status, activity, sizeof activity);
    if (reason) buf_adds(out, reason);
    else if (a->start_failure[0]) buf_addf(out, "the board could not start a session process: %s", a->start_failure);
    else if (a->over_quota) {
        buf_adds(out, "the session's directory holds ");
        megabytes(out, a->over_quota);
        buf_adds(out, " MB, over its quota of ");
        megabytes(out, b->o->session_quota);
        buf_addf(out, " MB; the board ended the session while %s", activity);
    } else if (a->over_files)
        buf_addf(out, "the session's directory holds more than its quota of %llu files and directories; the board "
                 "ended the session while %s", (unsigned long long)b->o->session_quota_files, activity);
    else if (a->abandoned) buf_addf(out, "the client left while %s; the board ended the session", activity);
    else if (a->timed_out) buf_addf(out, "%s expired while %s; the board ended the session", a->timeout_reason, activity);
    else if (!WIFSIGNALED(wait_status) && WEXITSTATUS(wait_status) == 0 &&
             __atomic_load_n(b->status, __ATOMIC_SEQ_CST) == ST_FINISHED) {
    } else if (a->oom_kills) {
        buf_adds(out, "the session went over its memory limit of ");
        megabytes(out, b->o->limits.memory);
        buf_addf(out, " MB (--session-memory): the kernel killed %llu of its processes, and the board's session "
                 "process %s while %s", (unsigned long long)a->oom_kills, how, activity);
    } else buf_addf(out, "the board's session process %s while %s", how, activity);
}

/* Once the session process is reaped: what its cgroup saw, then whatever is left in it killed, and it removed. */
static void remove_cgroup(Board *b) {
    Active *a = &b->active;
    if (!a->cgroup[0]) return;
    a->oom_kills = cgroup_oom_kills(b->confinement, a->cgroup);
    uint64_t refused = cgroup_refused_forks(b->confinement, a->cgroup);
    if (refused)
        log_msg(LOG_WARNING, "session from %s: the process limit of %llu refused %llu fork(s)", a->peer,
                (unsigned long long)b->o->limits.processes, (unsigned long long)refused);
    if (cgroup_remove(b->confinement, a->cgroup))
        log_msg(LOG_ERROR, "the cgroup of the session from %s could not be emptied and removed", a->peer);
    a->cgroup[0] = 0;
}

static void end_session(Board *b, int wait_status, const char *reason) {
    Active *a = &b->active;
    b->busy = 0;
    if (b->has_tracker && !reason) tracker_session_ended(&b->tracker);
    if (b->has_proxy && !reason) proxy_session_ended(&b->proxy);
    Buf message = {0}, notice = {0};
    end_message(b, wait_status, reason, &message);
    double elapsed = monotonic_now() - a->started;
    if (message.len) log_msg(LOG_WARNING, "session from %s ended after %.1f s: %s", a->peer, elapsed, buf_str(&message));
    else log_msg(LOG_INFO, "session from %s ended after %.1f s", a->peer, elapsed);
    remove_tree(a->directory); /* before the client sees the end of the stream */
    if (a->relayed) relay_drain_child(&a->relay);
    if (reason || !reply_cut_short(b)) {
        buf_adds(&notice, "{\"message\":");
        json_string(&notice, buf_str(&message), message.len);
        if (WIFSIGNALED(wait_status)) buf_addf(&notice, ",\"signal\":%d,\"exit_code\":null", WTERMSIG(wait_status));
        else buf_addf(&notice, ",\"signal\":null,\"exit_code\":%d", WEXITSTATUS(wait_status));
        buf_addf(&notice, ",\"timed_out\":%s,\"board\":", a->timed_out ? "true" : "false");
        json_string(&notice, b->name, strlen(b->name));
        buf_adds(&notice, ",\"started\":");
        json_double(&notice, a->started_at);
        buf_adds(&notice, ",\"ended\":");
        json_double(&notice, wall_now());
        buf_adds(&notice, "}");
        if (a->relayed) {
            unsigned char header[FRAME_HEADER];
            header_encode(header, OP_SESSION_END, 0, (uint32_t)notice.len, 0);
            Buf frame = {0};
            buf_add(&frame, header, sizeof header);
            buf_add(&frame, notice.data, notice.len);
            relay_finish(&a->relay, frame.data, frame.len, NOTIFY_TIMEOUT);
            buf_free(&frame);
        } else {
            set_send_timeout(a->fd, NOTIFY_TIMEOUT);
            if (send_frame(a->fd, OP_SESSION_END, 0, notice.data, notice.len, NULL, 0))
                log_msg(LOG_INFO, "could not tell the client: %s", strerror(errno));
            shutdown(a->fd, SHUT_WR);
        }
    }
    if (a->relayed && a->relay.outer >= 0) relay_finish(&a->relay, NULL, 0, NOTIFY_TIMEOUT);
    else if (!a->relayed) close(a->fd);
    a->relayed = 0;
    buf_free(&message);
    buf_free(&notice);
}

/* SIGKILL every process of the session: its cgroup where it has one, and its process group (by the spawner, which
 * kills only a session it has not reaped yet, and reports the end). */
static void kill_session(Board *b) {
    if (!b->busy) return;
    if (b->active.cgroup[0]) cgroup_kill(b->confinement, b->active.cgroup);
    if (spawner_kill(b->spawner)) b->spawner_gone = 1;
}

/* Reads one report of the spawner: the session started, ended, or could not start. */
/* The session ended (or never started): its cgroup goes, the next session's process is forked ahead, and the
 * board is idle again (see tick). */
static void session_over(Board *b, int wait_status) {
    remove_cgroup(b);
    end_session(b, wait_status, NULL);
    stand_by(b);
    b->drop_at = monotonic_now() + IDLE_DROP_DELAY;
}

static void on_report(Board *b) {
    int pid = 0, wait_status = 0;
    char failure[sizeof b->active.start_failure];
    int kind = spawner_report(b->spawner, &pid, &wait_status, failure, sizeof failure);
    Active *a = &b->active;
    if (kind == REPORT_GONE) {
        log_msg(LOG_ERROR, "the session spawner (pid %d) is gone; the daemon stops", (int)b->spawner->pid);
        b->spawner_gone = 1;
    } else if (kind < 0) {
    } else if (!b->busy) {
        log_msg(LOG_ERROR, "the session spawner reported '%c' with no session running; ignored", kind);
    } else if (kind == REPORT_STARTED) {
        a->pid = pid;
        if (a->deadline > 0)
            log_msg(LOG_INFO, "session from %s started (pid %d, timeout %g s)", a->peer, pid, a->deadline - a->started);
        else log_msg(LOG_INFO, "session from %s started (pid %d)", a->peer, pid);
    } else if (kind == REPORT_ENDED) {
        session_over(b, wait_status);
    } else if (kind == REPORT_FAILED) {
        snprintf(a->start_failure, sizeof a->start_failure, "%s", failure);
        session_over(b, 0);
    }
}

static uint64_t usage_bytes, usage_entries, usage_entry_limit;

static int count_entry(const char *path, const struct stat *info, int flag, struct FTW *ftw) {
    (void)path;
    if (ftw->level == 0) return 0;
    usage_entries++;
    if (usage_entry_limit && usage_entries > usage_entry_limit) return 1;
    if (flag != FTW_D && flag != FTW_DNR) usage_bytes += (uint64_t)info->st_size;
    return 0;
}

static void check_quota(Board *b, double now) {
    Active *a = &b->active;
    a->next_quota_check = now + QUOTA_CHECK_PERIOD;
    usage_bytes = usage_entries = 0;
    usage_entry_limit = b->o->session_quota_files;
    nftw(a->directory, count_entry, 16, FTW_PHYS);
    if (b->o->session_quota_files && usage_entries > b->o->session_quota_files) a->over_files = 1;
    else if (b->o->session_quota && usage_bytes > b->o->session_quota) a->over_quota = usage_bytes;
    else return;
    log_msg(LOG_WARNING, "session from %s: its directory is over its quota; killing it", a->peer);
    kill_session(b);
}

static void tick(Board *b, double now) {
    for (int k = b->pending_count; k-- > 0;)
        if (b->pending[k]->deadline <= now) {
            log_msg(LOG_WARNING, "handshake from %s timed out after %g s; closing", b->pending[k]->peer,
                    b->o->handshake_timeout);
            drop_pending(b, k, 1);
        }
    if (b->accept_paused_until && now >= b->accept_paused_until) b->accept_paused_until = 0;
    if (b->drop_at > 0 && now >= b->drop_at) {
        if (!b->busy) drop_code_pages(); /* idle since the last session: what it ran is not kept resident */
        b->drop_at = 0;
    }
    if (!b->busy) return;
    Active *a = &b->active;
    if (a->deadline > 0 && now >= a->deadline && !a->timed_out) {
        log_msg(LOG_WARNING, "session from %s reached its timeout of %g s; killing it", a->peer, a->deadline - a->started);
        a->timed_out = 1;
        kill_session(b);
    }
    if ((b->o->session_quota || b->o->session_quota_files) && now >= a->next_quota_check && !a->over_quota &&
        !a->over_files)
        check_quota(b, now);
    if (!a->abandoned && __atomic_load_n(b->status, __ATOMIC_SEQ_CST) == ST_RUNNING) {
        struct pollfd hangup = {a->fd, POLLRDHUP, 0};
        if (poll(&hangup, 1, 0) > 0 && (hangup.revents & (POLLRDHUP | POLLHUP))) {
            char activity[STATUS_SIZE];
            status_activity(b->status, activity, sizeof activity);
            log_msg(LOG_WARNING, "client %s left while %s; killing the session", a->peer, activity);
            a->abandoned = 1;
            kill_session(b);
        }
    }
}

static double next_timeout(Board *b, double now) {
    double soonest = now + 1.0;
    for (int k = 0; k < b->pending_count; k++)
        if (b->pending[k]->deadline < soonest) soonest = b->pending[k]->deadline;
    if (b->busy && b->active.deadline > 0 && b->active.deadline < soonest) soonest = b->active.deadline;
    if (b->busy && b->active.next_quota_check < soonest) soonest = b->active.next_quota_check;
    double link = b->has_tracker ? tracker_next_deadline(&b->tracker) : b->has_proxy ? proxy_next_deadline(&b->proxy) : 0;
    if (link > 0 && link < soonest) soonest = link;
    if (b->drop_at > 0 && b->drop_at < soonest) soonest = b->drop_at;
    return soonest > now ? soonest - now : 0;
}

static void serve_loop(Board *b) {
    struct pollfd *fds = NULL;
    while (!stop_signal && !b->spawner_gone) {
        fds = realloc(fds, sizeof(struct pollfd) * (size_t)(b->pending_count + FIRST_PENDING));
        if (!fds) abort();
        fds[0] = (struct pollfd){wake[0], POLLIN, 0};
        fds[1] = (struct pollfd){b->accept_paused_until || b->listener < 0 ? -1 : b->listener, POLLIN, 0};
        fds[2] = (struct pollfd){-1, 0, 0};
        fds[3] = (struct pollfd){b->spawner->fd, POLLIN, 0};
        int relayed = b->busy && b->active.relayed;
        fds[RELAY_OUTER] = (struct pollfd){relayed ? b->active.relay.outer : -1,
                                           relayed ? relay_outer_events(&b->active.relay) : 0, 0};
        fds[RELAY_INNER] = (struct pollfd){relayed ? b->active.relay.inner : -1,
                                           relayed ? relay_inner_events(&b->active.relay) : 0, 0};
        if (b->has_tracker) fds[2] = (struct pollfd){b->tracker.link.fd, tracker_events(&b->tracker), 0};
        if (b->has_proxy) fds[2] = (struct pollfd){b->proxy.link.fd, proxy_events(&b->proxy), 0};
        int count = b->pending_count;
        for (int k = 0; k < count; k++)
            fds[k + FIRST_PENDING] = (struct pollfd){b->pending[k]->fd, b->pending[k]->events, 0};
        int timeout = (int)(next_timeout(b, monotonic_now()) * 1000) + 1;
        int ready = poll(fds, (nfds_t)(count + FIRST_PENDING), timeout);
        if (ready < 0 && errno != EINTR) break;
        if (ready > 0 && fds[0].revents) {
            char drain[64];
            while (read(wake[0], drain, sizeof drain) > 0) {
            }
        }
        if (ready > 0 && (fds[RELAY_OUTER].revents || fds[RELAY_INNER].revents) && b->busy && b->active.relayed)
            relay_pump(&b->active.relay);
        if (ready > 0 && fds[3].revents) on_report(b);
        if (ready > 0) {
            /* from the last: a handshake that ends drops its entry, moving the last one into its place */
            for (int k = count; k-- > 0;)
                if (fds[k + FIRST_PENDING].revents && k < b->pending_count &&
                    b->pending[k]->fd == fds[k + FIRST_PENDING].fd)
                    on_opening_data(b, k);
            if (fds[1].revents & POLLIN) accept_one(b);
            if (fds[2].revents && b->has_tracker && b->tracker.link.fd == fds[2].fd)
                tracker_on_event(&b->tracker, fds[2].revents);
            Paired paired;
            if (fds[2].revents && b->has_proxy && b->proxy.link.fd == fds[2].fd &&
                proxy_on_event(&b->proxy, fds[2].revents, &paired))
                paired_by_proxy(b, &paired);
        }
        tick(b, monotonic_now());
        if (b->has_tracker) tracker_tick(&b->tracker, monotonic_now());
        if (b->has_proxy) proxy_tick(&b->proxy, monotonic_now());
    }
    free(fds);
}

static void shut_down(Board *b) {
    if (stop_signal) log_msg(LOG_INFO, "received %s, shutting down", signal_name(stop_signal));
    if (b->busy) { /* kill the session and wait for the spawner's report of its end */
        kill_session(b);
        int wait_status = SIGKILL, pid, kind = -1;
        char failure[64];
        struct pollfd report = {b->spawner->fd, POLLIN, 0};
        double deadline = monotonic_now() + STOP_TIMEOUT;
        while (!b->spawner_gone && kind != REPORT_ENDED && kind != REPORT_GONE && monotonic_now() < deadline)
            if (poll(&report, 1, (int)((deadline - monotonic_now()) * 1000) + 1) > 0)
                kind = spawner_report(b->spawner, &pid, &wait_status, failure, sizeof failure);
        if (kind != REPORT_ENDED) wait_status = SIGKILL;
        remove_cgroup(b);
        end_session(b, wait_status, "the board daemon shut down");
    }
    spawner_stop(b->spawner); /* its end of the pair closes, and it exits */
    confinement_destroy(b->confinement);
    while (b->pending_count) drop_pending(b, 0, 1);
    free(b->pending);
    if (b->has_tracker) tracker_close(&b->tracker);
    if (b->has_proxy) proxy_close(&b->proxy);
    if (b->listener >= 0) close(b->listener);
    if (b->own_work_dir) remove_tree(b->work_dir);
    log_msg(LOG_INFO, "board server stopped");
}

/* A work directory of this daemon's own holds WORK_DIR_LOCK, locked (flock) as long as the daemon runs. When the
 * daemon is killed its spawner removes it, unless the spawner is killed too (a launcher kills what is left of a
 * dead daemon's process group, the spawner with it): then the next daemon to start in the same place does. Any
 * farm-board-* directory of this user whose lock it can take belongs to a daemon that is gone. */
#define WORK_DIR_LOCK ".farm-board.lock"

static void claim_work_dir(const char *work_dir) {
    char path[PATH_MAX + 32], locked[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/.lock-new", work_dir);
    snprintf(locked, sizeof locked, "%s/%s", work_dir, WORK_DIR_LOCK);
    work_dir_lock = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    /* locked before it has its name, so that no other daemon finds it unlocked */
    if (work_dir_lock < 0 || flock(work_dir_lock, LOCK_EX | LOCK_NB) || rename(path, locked))
        log_msg(LOG_WARNING, "cannot lock the work directory %s: %s", work_dir, strerror(errno));
}

static void remove_dead_work_dirs(const char *temp) {
    DIR *dir = opendir(temp);
    struct dirent *entry;
    while (dir && (entry = readdir(dir))) {
        char path[PATH_MAX], lock[PATH_MAX];
        struct stat info;
        if (strncmp(entry->d_name, "farm-board-", 11) ||
            snprintf(path, sizeof path, "%s/%s", temp, entry->d_name) >= (int)sizeof path ||
            snprintf(lock, sizeof lock, "%s/%s", path, WORK_DIR_LOCK) >= (int)sizeof lock)
            continue;
        if (lstat(path, &info) || !S_ISDIR(info.st_mode) || info.st_uid != geteuid()) continue;
        int fd = open(lock, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue; /* not a native daemon's, or one still starting */
        if (!flock(fd, LOCK_EX | LOCK_NB)) {
            log_msg(LOG_INFO, "removing %s, the work directory of a board daemon that is gone", path);
            remove_tree(path);
        }
        close(fd);
    }
    if (dir) closedir(dir);
}

static int make_work_dir(Board *b) {
    const char *given = b->o->work_dir;
    if (given) {
        snprintf(b->work_dir, sizeof b->work_dir, "%s", given);
        for (char *p = b->work_dir + 1; *p; p++)
            if (*p == '/') {
                *p = 0;
                mkdir(b->work_dir, 0777);
                *p = '/';
            }
        if (mkdir(b->work_dir, 0777) && errno != EEXIST) {
            log_msg(LOG_ERROR, "cannot make the work directory %s: %s", b->work_dir, strerror(errno));
            return -1;
        }
        return 0;
    }
    const char *temp = getenv("TMPDIR");
    remove_dead_work_dirs(temp && *temp ? temp : "/tmp");
    snprintf(b->work_dir, sizeof b->work_dir, "%s/farm-board-XXXXXX", temp && *temp ? temp : "/tmp");
    if (!mkdtemp(b->work_dir)) {
        log_msg(LOG_ERROR, "cannot make a work directory in %s: %s", temp && *temp ? temp : "/tmp", strerror(errno));
        return -1;
    }
    chmod(b->work_dir, 0711);
    claim_work_dir(b->work_dir);
    b->own_work_dir = 1;
    return 0;
}

int serve_board(const Options *o, const unsigned char *secret, size_t secret_len, Spawner *spawner,
                Confinement *confinement, unsigned char *status) {
    Board b = {.o = o, .secret = (unsigned char *)secret, .secret_len = secret_len, .listener = -1,
               .spawner = spawner, .confinement = confinement, .status = status};
    if (!secret_len) b.secret = NULL;
    if (pipe2(wake, O_NONBLOCK | O_CLOEXEC)) {
        log_msg(LOG_ERROR, "cannot set up: %s", strerror(errno));
        return 1;
    }
    /* through a proxy the board dials out (host and port are the proxy's) and listens nowhere */
    if (o->through_proxy) b.port = o->port;
    else if (listen_on(&b)) return 1;
    if (make_work_dir(&b)) return 1;
    if (b.own_work_dir && spawner_work_dir(spawner, b.work_dir)) b.spawner_gone = 1;
    stand_by(&b);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    if (o->name[0]) snprintf(b.name, sizeof b.name, "%s", o->name);
    else if (o->through_proxy) snprintf(b.name, sizeof b.name, "%s/%d", host, (int)getpid());
    else snprintf(b.name, sizeof b.name, "%s:%d", host, b.port);
    if (o->through_proxy) {
        b.has_proxy = 1;
        proxy_init(&b.proxy, o->host, o->port, o->key, b.secret, b.secret_len);
    } else if (o->tracker) {
        b.has_tracker = 1;
        tracker_init(&b.tracker, o->tracker, o->key, o->custom_addr, b.name, b.port, b.secret, b.secret_len);
    }
    struct sigaction action = {.sa_handler = on_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGCHLD, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (b.has_proxy) log_msg(LOG_INFO, "serving key '%s' through the proxy at %s:%d", o->key, o->host, o->port);
    else log_msg(LOG_INFO, "bind to %s:%d", o->host, b.port);
    if (b.has_tracker) tracker_tick(&b.tracker, monotonic_now());
    if (b.has_proxy) proxy_tick(&b.proxy, monotonic_now());
    drop_code_pages(); /* started: what start-up ran is not kept resident */
    serve_loop(&b);
    shut_down(&b);
    return b.spawner_gone ? 1 : 0;
}
