/* The session spawner, as farm/board/spawner.py: the process that forks the sessions. main() forks it before it
 * reads the farm secret, so neither the spawner nor any session it forks ever held the secret in its memory. The
 * daemon hands it each admitted connection over a SOCK_SEQPACKET pair (SCM_RIGHTS) with the session's order; the
 * spawner forks the session process, reaps it, kills what it left behind (the spawner is a subreaper) and reports
 * how it ended. When the daemon is gone (its end of the pair closes) the spawner does what the Python board's
 * watchdog does: it kills the running session and its cgroup, removes the session's directory and the daemon's own
 * work directory, and the farm's cgroups, and exits. Messages: one byte of kind, then packed fields.
 *
 * As on the Python board, each session process is forked ahead of its client: when the daemon is ready for the next
 * session it orders a standby in that session's cgroup. The standby leaves the spawner and moves into the cgroup
 * (the slow part of a start: the write to cgroup.procs waits for an RCU grace period), names itself farm-standby,
 * and waits on a socket pair of its own for the start order, which the spawner passes on with the connection. */
#define _GNU_SOURCE
#include "board.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The daemon's orders: start a session (with its connection), kill the running session's process group. */
#define ORDER_START 'S'
#define ORDER_KILL 'K'
#define ORDER_WORK_DIR 'W' /* the work directory the daemon made, removed when the daemon is gone */
#define ORDER_STANDBY 'B'  /* fork the next session's process now, in the cgroup named */
#define STANDBY_NAME "farm-standby"
/* Largest order: the directory, the key, the board's name, the cgroup's name and the bytes after the handshake. */
#define MAX_ORDER (64u << 10)
#define MAX_REPORT 1024
#define ORDER_NUMBERS (3 * 8)
#define ORDER_LENGTHS 5
#define ORDER_HEADER (1 + ORDER_NUMBERS + 4 * ORDER_LENGTHS)

typedef struct {
    int sock, wake[2];
    const Options *o;
    unsigned char *status;
    const Confinement *confinement;
    pid_t session;        /* the running session's pid and process group (0: none) */
    char cgroup[64];      /* its cgroup's name ("": none) */
    pid_t standby;        /* the next session's process, forked ahead (0: none) */
    int standby_sock;     /* the spawner's end of the standby's socket pair */
    char standby_cgroup[64];
    char *directory;      /* the last session's directory (NULL: none yet) */
    char *work_dir;       /* the daemon's own work directory (NULL: one it was given) */
    int daemon_gone;      /* nobody to report to */
    double drop_at;       /* when to drop the code pages, if no session runs then (0: done) */
} SpawnerProcess;

static int child_wake = -1;
static unsigned char order_buffer[MAX_ORDER]; /* the orders the spawner (or a standby) receives */

static void on_child(int number) {
    (void)number;
    int saved = errno;
    ssize_t ignored = write(child_wake, "", 1);
    (void)ignored;
    errno = saved;
}

static void report(SpawnerProcess *p, char kind, const void *body, size_t len) {
    unsigned char message[MAX_REPORT];
    if (len > sizeof message - 1) len = sizeof message - 1;
    message[0] = (unsigned char)kind;
    memcpy(message + 1, body, len);
    if (p->daemon_gone || send(p->sock, message, len + 1, MSG_NOSIGNAL) >= 0) return;
    if (errno == EPIPE || errno == ECONNRESET) /* it died or stopped: the spawner follows it */
        log_msg(LOG_INFO, "the session spawner's daemon is gone; its report is dropped");
    else log_msg(LOG_ERROR, "the session spawner cannot reach the daemon: %s", strerror(errno));
}

static void report_numbers(SpawnerProcess *p, char kind, int32_t pid, int32_t wait_status) {
    unsigned char body[8];
    put_u32(body, (uint32_t)pid);
    put_u32(body + 4, (uint32_t)wait_status);
    report(p, kind, body, kind == REPORT_STARTED ? 4 : 8);
}

static void report_failure(SpawnerProcess *p, const char *fmt, const char *detail) {
    char text[MAX_REPORT - 1];
    snprintf(text, sizeof text, fmt, detail);
    report(p, REPORT_FAILED, text, strlen(text));
}

/* Forgets the standby once it is reaped (it ended before its session: the next session is forked when it starts). */
static void forget_standby(SpawnerProcess *p) {
    log_msg(LOG_WARNING, "the standby session process %d ended before its session", (int)p->standby);
    close(p->standby_sock);
    p->standby = 0;
}

/* Reaps any child that ended: what a session's strays left when they died, or the standby. */
static void reap_any(SpawnerProcess *p) {
    pid_t pid;
    while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
        if (p->standby && pid == p->standby) forget_standby(p);
}

/* Kills and reaps what a session left behind that came to the spawner, a subreaper: its only other children but
 * the standby. Pass after pass, since the children of each process killed come to the spawner in turn once it is
 * gone (a session without a cgroup has nothing else to find them by). */
static void kill_strays(SpawnerProcess *p) {
    pid_t self = getpid();
    for (int killed = 1; killed;) {
        killed = 0;
        DIR *proc = opendir("/proc");
        struct dirent *entry;
        while (proc && (entry = readdir(proc))) {
            pid_t pid = (pid_t)atoi(entry->d_name);
            char path[64], stat[512];
            if (pid <= 0 || pid == p->standby) continue;
            snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
            if (read_text_file(path, stat, sizeof stat) <= 0) continue;
            char *close_paren = strrchr(stat, ')');
            int parent = 0;
            if (close_paren && sscanf(close_paren + 2, "%*c %d", &parent) == 1 && parent == self &&
                kill(pid, SIGKILL) == 0 && waitpid(pid, NULL, 0) == pid)
                killed = 1; /* reaped: its own children are the spawner's now */
        }
        if (proc) closedir(proc);
    }
    reap_any(p);
}

static void kill_session(SpawnerProcess *p) {
    if (p->cgroup[0]) cgroup_kill(p->confinement, p->cgroup);
    if (p->session) killpg(p->session, SIGKILL);
}

/* Reaps an ended session: its group killed while its id cannot be reused yet, then the strays; reports it. */
static void reap(SpawnerProcess *p, int block) {
    if (!p->session) {
        reap_any(p);
        return;
    }
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)p->session, &info, WEXITED | WNOWAIT | (block ? 0 : WNOHANG)) || info.si_pid == 0)
        return;
    killpg(p->session, SIGKILL);
    int wait_status = 0;
    waitpid(p->session, &wait_status, 0);
    pid_t pid = p->session;
    p->session = 0;
    kill_strays(p);
    report_numbers(p, REPORT_ENDED, pid, wait_status);
}

/* SIGHUP in a session process (and, inherited, in its children). When it is the session process's parent-death
 * signal (the spawner was killed, and cannot kill the session itself), the session's whole process group goes, so
 * that no child it forked keeps the client's connection open; any other SIGHUP has its default action. */
static pid_t session_pid, session_spawner;

static void spawner_gone(int signum) {
    if (getpid() == session_pid && getppid() != session_spawner) kill(0, SIGKILL);
    signal(signum, SIG_DFL);
    raise(signum);
}

/* In a session process: give up the spawner's powers and enter the session's cgroup; the limits left to set. */
static SessionLimits leave_spawner(SpawnerProcess *p, const char *cgroup) {
    setpgid(0, 0);
    session_pid = getpid();
    signal(SIGHUP, spawner_gone);
    prctl(PR_SET_PDEATHSIG, SIGHUP); /* enter_session keeps it when it changes user */
    if (getppid() != session_spawner) _exit(1); /* the spawner died before the signal was set */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    close(p->sock);
    close(p->wake[0]);
    close(p->wake[1]);
    SessionLimits limits = p->o->limits;
    if (*cgroup) { /* first thing: whatever it starts from now on stays in the session's cgroup */
        if (cgroup_enter(p->confinement, cgroup)) _exit(1);
        if (cgroup_controls(p->confinement, CONTROL_PIDS)) limits.processes = 0;
        if (cgroup_controls(p->confinement, CONTROL_MEMORY)) limits.memory = 0;
    }
#ifdef __SANITIZE_ADDRESS__
    limits.memory = 0; /* AddressSanitizer's shadow and allocator map far more than any such limit */
#endif
    return limits;
}

/* The session process, once it left the spawner: its limits, user and environment, then serve. */
static void serve(SpawnerProcess *p, int fd, const SessionOrder *order, const SessionLimits *limits) {
    if (enter_session(&p->o->user, limits, order->directory)) _exit(1);
    exit(session_serve(fd, order));
}

/* Sends one message with descriptor `fd` attached (SCM_RIGHTS): 0, or -1 (errno). */
static int send_with_fd(int sock, const void *message, size_t len, int fd) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec part = {(void *)message, len};
    struct msghdr msg = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(sock, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* Receives one message and the descriptors that came with it (at most 4, the rest closed by the kernel's
 * MSG_CTRUNC): its length (0 at the end of the stream, -1 on an error), and whether it was cut short. */
static ssize_t receive_message(int sock, unsigned char *message, size_t cap, int fds[4], int *count, int *cut) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(4 * sizeof(int))];
    } control;
    struct iovec part = {message, cap};
    struct msghdr msg = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
    ssize_t got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    *count = 0;
    if (got < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && *count < 4; k++)
                memcpy(&fds[(*count)++], CMSG_DATA(c) + k * sizeof(int), sizeof(int));
    *cut = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    return got;
}

/* A start order: the numbers, then the lengths of the directory, key, name, cgroup and leftover, then those.
 * Fills `order` and `cgroup` (pointing into `*strings`, which the caller frees): NULL, or what is wrong. */
static const char *parse_order(SpawnerProcess *p, const unsigned char *message, size_t len, SessionOrder *order,
                               const char **cgroup, char **strings) {
    if (len < ORDER_HEADER) return "that is too short";
    const unsigned char *at = message + 1 + ORDER_NUMBERS;
    size_t lengths[ORDER_LENGTHS], total = ORDER_HEADER;
    for (int k = 0; k < ORDER_LENGTHS; k++) {
        lengths[k] = get_u32(at + 4 * k);
        total += lengths[k];
    }
    if (total != len || lengths[3] >= sizeof p->cgroup) return "of the wrong length";
    /* each string NUL-terminated in a copy; the leftover bytes as they came */
    char *text[ORDER_LENGTHS], *to = *strings = xmalloc(len + ORDER_LENGTHS);
    const unsigned char *from = message + ORDER_HEADER;
    for (int k = 0; k < ORDER_LENGTHS; k++) {
        memcpy(to, from, lengths[k]);
        to[lengths[k]] = 0;
        text[k] = to;
        to += lengths[k] + 1;
        from += lengths[k];
    }
    SessionOrder parsed = {text[0], text[1], text[2], get_u64(message + 1), get_u64(message + 9), p->status,
                           (const unsigned char *)text[4], lengths[4], get_u64(message + 17)};
    *order = parsed;
    *cgroup = text[3];
    return NULL;
}

/* A standby, named STANDBY_NAME meanwhile: waits for its session's order and connection, then serves; it exits
 * when the spawner retires it (its end of the pair closes). */
static void await_order(SpawnerProcess *p, int sock, const SessionLimits *limits) {
    char name[16] = "";
    prctl(PR_GET_NAME, name);
    prctl(PR_SET_NAME, STANDBY_NAME);
    unsigned char *message = order_buffer; /* this process's own copy */
    int fds[4], count, cut;
    drop_code_pages(); /* it may wait long: it keeps resident only what it runs once its order comes */
    ssize_t got = receive_message(sock, message, MAX_ORDER, fds, &count, &cut);
    close(sock);
    SessionOrder order;
    const char *cgroup;
    char *strings = NULL;
    if (got <= 0 || cut || count != 1 || message[0] != ORDER_START ||
        parse_order(p, message, (size_t)got, &order, &cgroup, &strings))
        _exit(0);
    prctl(PR_SET_NAME, name);
    serve(p, fds[0], &order, limits);
}

/* Ends the standby, which will have no session: its group killed, and reaped. */
static void retire_standby(SpawnerProcess *p) {
    if (!p->standby) return;
    close(p->standby_sock);
    killpg(p->standby, SIGKILL);
    kill(p->standby, SIGKILL);
    waitpid(p->standby, NULL, 0);
    p->standby = 0;
}

/* Forks the next session's process now, in `cgroup`, to wait for its order (replacing any standby). */
static void stand_by(SpawnerProcess *p, const char *cgroup) {
    retire_standby(p);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair)) {
        log_msg(LOG_ERROR, "cannot make a standby session process's socket pair: %s", strerror(errno));
        return;
    }
    session_spawner = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        close(pair[0]);
        SessionLimits limits = leave_spawner(p, cgroup);
        await_order(p, pair[1], &limits);
    }
    close(pair[1]);
    if (pid < 0) {
        log_msg(LOG_ERROR, "cannot fork a standby session process: %s", strerror(errno));
        close(pair[0]);
        return;
    }
    setpgid(pid, pid);
    p->standby = pid;
    p->standby_sock = pair[0];
    snprintf(p->standby_cgroup, sizeof p->standby_cgroup, "%s", cgroup);
}

/* Starts the session of a start order on connection `fd`: the standby takes it if it waits in the order's cgroup,
 * else the session process is forked now. */
static void start(SpawnerProcess *p, const unsigned char *message, size_t len, int fd) {
    if (p->session) {
        char pid[24];
        snprintf(pid, sizeof pid, "%d", (int)p->session);
        report_failure(p, "a session process (pid %s) still runs", pid);
        return;
    }
    SessionOrder order;
    const char *cgroup, *wrong;
    char *strings = NULL;
    if ((wrong = parse_order(p, message, len, &order, &cgroup, &strings))) {
        report_failure(p, "a start order %s", wrong);
        free(strings);
        return;
    }
    snprintf(p->cgroup, sizeof p->cgroup, "%s", cgroup);
    free(p->directory);
    p->directory = xstrdup(order.directory);
    pid_t pid = p->standby;
    if (pid && !strcmp(p->standby_cgroup, cgroup) && !send_with_fd(p->standby_sock, message, len, fd)) {
        close(p->standby_sock); /* handed over */
        p->standby = 0;
    } else {
        if (pid) log_msg(LOG_WARNING, "the standby session process %d is gone; forking the session's", (int)pid);
        retire_standby(p);
        session_spawner = getpid();
        pid = fork();
        if (pid == 0) {
            SessionLimits limits = leave_spawner(p, cgroup);
            serve(p, fd, &order, &limits);
        }
        if (pid < 0) {
            report_failure(p, "cannot start a session process: %s", strerror(errno));
            p->cgroup[0] = 0;
            free(strings);
            return;
        }
        setpgid(pid, pid);
    }
    p->session = pid;
    report_numbers(p, REPORT_STARTED, pid, 0);
    free(strings);
}

/* Carries out one order: 0, or -1 once the daemon is gone. */
static int on_order(SpawnerProcess *p, unsigned char *message) {
    int fds[4], count, cut;
    ssize_t got = receive_message(p->sock, message, MAX_ORDER, fds, &count, &cut);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
    if (got <= 0) {
        for (int k = 0; k < count; k++) close(fds[k]);
        return -1;
    }
    if (message[0] == ORDER_START && count == 1 && !cut) start(p, message, (size_t)got, fds[0]);
    else if (message[0] == ORDER_KILL) kill_session(p);
    else if (message[0] == ORDER_STANDBY && (size_t)got - 1 < sizeof p->standby_cgroup &&
             !memchr(message + 1, 0, (size_t)got - 1)) {
        char cgroup[sizeof p->standby_cgroup];
        memcpy(cgroup, message + 1, (size_t)got - 1);
        cgroup[got - 1] = 0;
        stand_by(p, cgroup);
        p->drop_at = monotonic_now() + IDLE_DROP_DELAY; /* a standby is ordered when the board is idle again */
    } else if (message[0] == ORDER_WORK_DIR && got > 1 && !memchr(message + 1, 0, (size_t)got - 1)) {
        free(p->work_dir);
        p->work_dir = xmalloc((size_t)got);
        memcpy(p->work_dir, message + 1, (size_t)got - 1);
        p->work_dir[got - 1] = 0;
    }
    else log_msg(LOG_ERROR, "the session spawner got an unexpected order '%c'; ignored", message[0]);
    for (int k = 0; k < count; k++) close(fds[k]);
    return 0;
}

static int spawner_main(SpawnerProcess *p) {
    for (int number = 1; number < NSIG; number++)
        if (number == SIGINT || number == SIGTERM || number == SIGPIPE)
            signal(number, SIG_IGN); /* it ends when the daemon's end of the pair closes */
    child_wake = p->wake[1];
    struct sigaction action = {.sa_handler = on_child};
    sigemptyset(&action.sa_mask);
    sigaction(SIGCHLD, &action, NULL);
    prctl(PR_SET_CHILD_SUBREAPER, 1); /* what sessions leave behind comes here, to be killed */
    unsigned char *message = order_buffer;
    drop_code_pages(); /* the daemon's start-up code, run before the fork, is not kept resident here either */
    for (;;) {
        struct pollfd fds[2] = {{p->sock, POLLIN, 0}, {p->wake[0], POLLIN, 0}};
        double wait = p->drop_at > 0 ? p->drop_at - monotonic_now() : -1;
        int ready = poll(fds, 2, p->drop_at > 0 ? (wait > 0 ? (int)(wait * 1000) + 1 : 0) : -1);
        if (ready < 0 && errno != EINTR) break;
        if (p->drop_at > 0 && monotonic_now() >= p->drop_at) {
            if (!p->session) drop_code_pages(); /* idle since the last session */
            p->drop_at = 0;
        }
        if (ready > 0 && fds[1].revents) {
            char drain[64];
            while (read(p->wake[0], drain, sizeof drain) > 0) {
            }
        }
        if (ready > 0 && fds[0].revents && on_order(p, message)) break;
        reap(p, 0);
    }
    /* the daemon is gone: nothing of its sessions may outlive it */
    p->daemon_gone = 1;
    kill_session(p);
    reap(p, 1);
    retire_standby(p);
    if (p->cgroup[0]) cgroup_remove(p->confinement, p->cgroup);
    confinement_destroy(p->confinement);
    if (p->directory) remove_tree(p->directory);
    if (p->work_dir) remove_tree(p->work_dir);
    free(p->directory);
    free(p->work_dir);
    return 0;
}

int spawner_start(Spawner *sp, const Options *o, const Confinement *confinement, unsigned char *status) {
    int pair[2];
    sp->fd = -1;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair)) {
        log_msg(LOG_ERROR, "cannot make the session spawner's socket pair: %s", strerror(errno));
        return -1;
    }
    SpawnerProcess p = {.sock = pair[1], .o = o, .status = status, .confinement = confinement};
    if (pipe2(p.wake, O_NONBLOCK | O_CLOEXEC)) {
        log_msg(LOG_ERROR, "cannot set up the session spawner: %s", strerror(errno));
        close(pair[0]);
        close(pair[1]);
        return -1;
    }
    sp->pid = fork();
    if (sp->pid == 0) {
        close(pair[0]);
        exit(spawner_main(&p));
    }
    close(pair[1]);
    close(p.wake[0]);
    close(p.wake[1]);
    if (sp->pid < 0) {
        log_msg(LOG_ERROR, "cannot start the session spawner: %s", strerror(errno));
        close(pair[0]);
        return -1;
    }
    sp->fd = pair[0];
    return 0;
}

int spawner_order(Spawner *sp, int fd, const SessionOrder *order, const char *cgroup) {
    const char *text[ORDER_LENGTHS] = {order->directory, order->key, order->name, cgroup,
                                       (const char *)order->leftover};
    size_t lengths[ORDER_LENGTHS], total = ORDER_HEADER;
    for (int k = 0; k < ORDER_LENGTHS; k++) {
        lengths[k] = k == 4 ? order->leftover_len : strlen(text[k]);
        total += lengths[k];
    }
    if (total > MAX_ORDER) {
        errno = EMSGSIZE;
        return -1;
    }
    unsigned char *message = xmalloc(total), *at = message + ORDER_HEADER;
    message[0] = ORDER_START;
    put_u64(message + 1, order->max_message_size);
    put_u64(message + 9, order->quota);
    put_u64(message + 17, order->bytes_sent);
    for (int k = 0; k < ORDER_LENGTHS; k++) {
        put_u32(message + 1 + ORDER_NUMBERS + 4 * k, (uint32_t)lengths[k]);
        memcpy(at, text[k], lengths[k]);
        at += lengths[k];
    }
    int status = send_with_fd(sp->fd, message, total, fd);
    free(message);
    return status;
}

int spawner_standby(Spawner *sp, const char *cgroup) {
    char message[1 + 64];
    size_t n = strlen(cgroup);
    if (n >= sizeof message - 1) {
        errno = EMSGSIZE;
        return -1;
    }
    message[0] = ORDER_STANDBY;
    memcpy(message + 1, cgroup, n);
    return send(sp->fd, message, n + 1, MSG_NOSIGNAL) == (ssize_t)(n + 1) ? 0 : -1;
}

int spawner_work_dir(Spawner *sp, const char *path) {
    size_t n = strlen(path);
    if (n + 1 > MAX_ORDER) return -1;
    char *message = xmalloc(n + 1);
    message[0] = ORDER_WORK_DIR;
    memcpy(message + 1, path, n);
    ssize_t sent = send(sp->fd, message, n + 1, MSG_NOSIGNAL);
    free(message);
    return sent == (ssize_t)(n + 1) ? 0 : -1;
}

int spawner_kill(Spawner *sp) {
    char order = ORDER_KILL;
    return send(sp->fd, &order, 1, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

int spawner_report(Spawner *sp, int *pid, int *wait_status, char *text, size_t cap) {
    unsigned char message[MAX_REPORT + 1];
    ssize_t got;
    do got = recv(sp->fd, message, MAX_REPORT, 0);
    while (got < 0 && errno == EINTR);
    if (got <= 0) return REPORT_GONE;
    *pid = got >= 5 ? (int)get_u32(message + 1) : 0;
    *wait_status = got >= 9 ? (int)get_u32(message + 5) : 0;
    if (message[0] == REPORT_FAILED && cap) {
        size_t n = (size_t)got - 1 < cap - 1 ? (size_t)got - 1 : cap - 1;
        memcpy(text, message + 1, n);
        text[n] = 0;
    }
    if (message[0] == REPORT_STARTED || message[0] == REPORT_ENDED || message[0] == REPORT_FAILED) return message[0];
    log_msg(LOG_ERROR, "the session spawner sent an unknown report '%c'; ignored", message[0]);
    return -1;
}

void spawner_stop(Spawner *sp) {
    if (sp->fd >= 0) close(sp->fd);
    sp->fd = -1;
    if (sp->pid > 0) waitpid(sp->pid, NULL, 0);
    sp->pid = 0;
}
