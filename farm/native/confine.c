/* What a session runs as and may use (farm/board/sandbox.py and the resource limits of farm/board/confine.py):
 * a daemon started as root runs sessions as an unprivileged user (`--session-user`, default nobody), each with a
 * clean environment, and bounds each process of a session with resource limits: no core dumps, open files, the
 * size of any file (the session quota), and where the session's cgroup (cgroup.c) does not bound them, processes
 * of its user and private memory. */
#define _GNU_SOURCE
#include "board.h"

#include <ctype.h>
#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#define DEFAULT_SESSION_USER "nobody"
#define SESSION_PATH "/usr/local/bin:/usr/bin:/bin"

int session_user(const char *name, SessionUser *user) {
    memset(user, 0, sizeof *user);
    if (geteuid() != 0) {
        struct passwd *own = getpwuid(geteuid());
        snprintf(user->name, sizeof user->name, "%s", own ? own->pw_name : "");
        if (!own) snprintf(user->name, sizeof user->name, "%u", (unsigned)geteuid());
        if (name && strcmp(name, user->name)) {
            log_msg(LOG_ERROR, "--session-user %s needs a daemon started as root; this one runs as %s", name,
                    user->name);
            return -1;
        }
        user->uid = geteuid(), user->gid = getegid();
        return 0;
    }
    const char *wanted = name ? name : DEFAULT_SESSION_USER;
    struct passwd *entry = getpwnam(wanted);
    if (!entry) {
        log_msg(LOG_ERROR, "the session user '%s' does not exist on this board: create it (e.g. `useradd --system "
                "--no-create-home farm-session`) or name another with --session-user", wanted);
        return -1;
    }
    snprintf(user->name, sizeof user->name, "%s", entry->pw_name);
    user->uid = entry->pw_uid, user->gid = entry->pw_gid, user->do_switch = 1;
    return 0;
}

void warn_about_user(const SessionUser *user) {
    if (!user->do_switch)
        log_msg(LOG_WARNING, "this daemon is not root, so sessions run as its own user %s: a session can read and "
                "write whatever that user can, the farm secret file included; start the daemon as root to run "
                "sessions as an unprivileged --session-user (see docs/security.md)", user->name);
    else if (user->uid == 0)
        log_msg(LOG_WARNING, "sessions run as root (--session-user %s): a session can do anything on this board",
                user->name);
}

/* How many processes and threads user `uid` runs (its real uid), as RLIMIT_NPROC counts them. */
static long user_tasks(uid_t uid) {
    long count = 0;
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    while (proc && (entry = readdir(proc))) {
        if (!isdigit((unsigned char)entry->d_name[0])) continue;
        char path[300], status[4096];
        snprintf(path, sizeof path, "/proc/%s/status", entry->d_name);
        if (read_text_file(path, status, sizeof status) <= 0) continue;
        const char *uid_line = strstr(status, "\nUid:"), *threads = strstr(status, "\nThreads:");
        if (uid_line && threads && strtoul(uid_line + 5, NULL, 10) == uid) count += strtol(threads + 9, NULL, 10);
    }
    if (proc) closedir(proc);
    return count;
}

static void limit(int which, uint64_t value, int zero_is_a_limit) {
    struct rlimit now;
    if ((!value && !zero_is_a_limit) || getrlimit(which, &now)) return;
    rlim_t wanted = (rlim_t)value;
    if (now.rlim_max != RLIM_INFINITY && now.rlim_max < wanted) wanted = now.rlim_max;
    struct rlimit both = {wanted, wanted}; /* soft and hard alike: an unprivileged session cannot raise them */
    setrlimit(which, &both);
}

/* In the session process, before any of the client's code: the limits, then the user, then the environment. */
int enter_session(const SessionUser *user, const SessionLimits *limits, const char *directory) {
    limit(RLIMIT_CORE, 0, 1);
    limit(RLIMIT_NOFILE, limits->open_files, 0);
    if (limits->processes)
        limit(RLIMIT_NPROC, limits->processes + (uint64_t)(user->uid ? user_tasks(user->uid) : 0), 0);
    limit(RLIMIT_DATA, limits->memory, 0);
    if (limits->quota) { /* no file the session writes grows past the quota: such writes fail with EFBIG */
        signal(SIGXFSZ, SIG_IGN);
        limit(RLIMIT_FSIZE, limits->quota, 0);
    }
    int parent_death = 0;
    prctl(PR_GET_PDEATHSIG, &parent_death);
    if (user->do_switch && (setgroups(0, NULL) || setgid(user->gid) || setuid(user->uid))) {
        log_msg(LOG_ERROR, "the session process cannot become %s", user->name);
        return -1;
    }
    prctl(PR_SET_PDEATHSIG, parent_death); /* again: changing user cleared it */
    static const char *const KEPT[] = {"LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM"};
    char *kept[5] = {0};
    for (size_t k = 0; k < 5; k++)
        if (getenv(KEPT[k])) kept[k] = xstrdup(getenv(KEPT[k]));
    clearenv();
    for (size_t k = 0; k < 5; k++)
        if (kept[k]) setenv(KEPT[k], kept[k], 1), free(kept[k]);
    setenv("PATH", SESSION_PATH, 1);
    setenv("HOME", directory, 1);
    setenv("TMPDIR", directory, 1);
    setenv("USER", user->name, 1);
    setenv("LOGNAME", user->name, 1);
    return 0;
}
