/* A cgroup per session, as farm/board/confine.py makes them. At start the daemon makes the farm's cgroup below its
 * own, farm-board-PID, in each hierarchy it can use (confinement_create), sweeping those of daemons that are gone;
 * then one child per session (cgroup_session), which the session process enters first thing (cgroup_enter), so that
 * everything it starts stays in it, even what leaves its process group. At the session's end the daemon kills the
 * whole cgroup and removes it (cgroup_remove); the session spawner does the same when the daemon dies.
 *
 * Which hierarchies count (/proc/self/mountinfo and /proc/self/cgroup): cgroup v2 with the memory and pids
 * controllers (memory.max, pids.max, cgroup.kill; a daemon whose own cgroup holds processes moves into a leaf,
 * farm-board-PID/daemon, before it enables them); hybrid: cgroup v2 without controllers, for cgroup.kill and its
 * populated state, with the cgroup v1 memory and pids hierarchies for the limits; cgroup v1 alone: the same limits,
 * and the kill reads cgroup.procs and kills until it is empty. Where none can be written the sessions get the
 * resource limits of confine.c only. */
#define _GNU_SOURCE
#include "board.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EMPTY_TIMEOUT 5.0
#define SESSION_PREFIX "session-"
#define FARM_PREFIX "farm-board-"
#define DAEMON_LEAF "daemon"
#define PROC_TEXT 65536

/* --- cgroup files ---------------------------------------------------------------------------- */

static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t written = write(fd, value, strlen(value));
    int saved = errno;
    close(fd);
    errno = saved;
    return written == (ssize_t)strlen(value) ? 0 : -1;
}

static int is_dir(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

static int exists(const char *path) {
    return access(path, F_OK) == 0;
}

/* The number after `key` in a flat-keyed cgroup file ("populated 1"); -1 if there is none. */
static long long field(const char *path, const char *key) {
    char text[4096];
    if (read_text_file(path, text, sizeof text) < 0) return -1;
    size_t n = strlen(key);
    for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, key, n) && line[n] == ' ') return strtoll(line + n + 1, NULL, 10);
    return -1;
}

static int join(char *out, const char *directory, const char *name) {
    return snprintf(out, CGROUP_PATH, "%s/%s", directory, name) < CGROUP_PATH ? 0 : -1;
}

/* --- finding the daemon's cgroups ------------------------------------------------------------- */

/* A path field of /proc/self/mountinfo, its octal escapes undone, into `out` (CGROUP_PATH bytes). */
static void unescape(const char *from, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n && k < CGROUP_PATH - 1; i++) {
        if (from[i] == '\\' && i + 3 < n && from[i + 1] >= '0' && from[i + 1] <= '3') {
            out[k++] = (char)(((from[i + 1] - '0') << 6) | ((from[i + 2] - '0') << 3) | (from[i + 3] - '0'));
            i += 3;
        } else out[k++] = from[i];
    }
    out[k] = 0;
}

/* The controllers of CONTROL_* among a v1 mount's comma-separated options. */
static int v1_controls(const char *options, size_t n) {
    int controls = 0;
    for (size_t start = 0; start < n;) {
        size_t end = start;
        while (end < n && options[end] != ',') end++;
        if (end - start == 6 && !strncmp(options + start, "memory", 6)) controls |= CONTROL_MEMORY;
        if (end - start == 4 && !strncmp(options + start, "pids", 4)) controls |= CONTROL_PIDS;
        start = end + 1;
    }
    return controls;
}

/* The path of process `pid`'s cgroup in the hierarchy of version `version` (v1: the one of controller `controls`)
 * from /proc/PID/cgroup's text; 0, or -1 if it is in none. */
static int membership(const char *proc_cgroup, int version, int controls, char *out, size_t cap) {
    for (const char *line = proc_cgroup; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *first = strchr(line, ':'), *second = first ? strchr(first + 1, ':') : NULL;
        const char *end = strchr(line, '\n');
        if (!second) continue;
        if (!end) end = line + strlen(line);
        int match = version == 2 ? (first - line == 1 && line[0] == '0' && second == first + 1)
                                 : (second > first + 1 && (v1_controls(first + 1, (size_t)(second - first - 1)) &
                                                           (controls & CONTROL_MEMORY ? CONTROL_MEMORY : CONTROL_PIDS)));
        if (match) {
            snprintf(out, cap, "%.*s", (int)(end - second - 1), second + 1);
            return 0;
        }
    }
    return -1;
}

typedef struct {
    int version, controls;
    char path[CGROUP_PATH];
} Found;

/* The cgroup directories of process `pid` ("self" or a number) in each hierarchy that matters: v2 first. */
static int process_cgroups(const char *pid, Found *found, int cap) {
    char *mountinfo = xmalloc(PROC_TEXT), *own = xmalloc(PROC_TEXT), path[64];
    int count = 0;
    snprintf(path, sizeof path, "/proc/%s/cgroup", pid);
    if (read_text_file("/proc/self/mountinfo", mountinfo, PROC_TEXT) <= 0 || read_text_file(path, own, PROC_TEXT) <= 0)
        goto done;
    for (int pass = 2; pass >= 1; pass--)
        for (char *line = mountinfo; line && *line && count < cap;
             line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            char *end = strchr(line, '\n'), *dash = strstr(line, " - ");
            if (!end) end = line + strlen(line);
            if (!dash || dash > end) continue;
            /* fields: id parent major:minor root point ...; after the dash: type source options */
            const char *fields[5];
            size_t lengths[5];
            const char *at = line;
            int k = 0;
            for (; k < 5 && at < dash; k++) {
                while (*at == ' ') at++;
                fields[k] = at;
                while (at < dash && *at != ' ') at++;
                lengths[k] = (size_t)(at - fields[k]);
            }
            if (k < 5) continue;
            const char *type = dash + 3, *type_end = strchr(type, ' ');
            if (!type_end || type_end > end) continue;
            int version = (size_t)(type_end - type) == 7 && !strncmp(type, "cgroup2", 7)  ? 2
                          : (size_t)(type_end - type) == 6 && !strncmp(type, "cgroup", 6) ? 1
                                                                                            : 0;
            if (version != pass) continue;
            int controls = 0;
            if (version == 1) {
                const char *source_end = strchr(type_end + 1, ' ');
                if (!source_end || source_end > end) continue;
                controls = v1_controls(source_end + 1, (size_t)(end - source_end - 1));
                if (!controls) continue;
            }
            int seen = 0;
            for (int j = 0; j < count; j++) seen |= found[j].version == version && found[j].controls == controls;
            char member[CGROUP_PATH], root[CGROUP_PATH], point[CGROUP_PATH];
            if (seen || membership(own, version, controls, member, sizeof member)) continue;
            unescape(fields[3], lengths[3], root);
            unescape(fields[4], lengths[4], point);
            const char *inside = member;
            size_t root_len = strlen(root);
            if (strcmp(root, "/") && !strncmp(member, root, root_len) && (!member[root_len] || member[root_len] == '/'))
                inside += root_len; /* a container may mount only part of the hierarchy */
            while (*inside == '/') inside++;
            Found *f = &found[count];
            f->version = version, f->controls = controls;
            if (snprintf(f->path, sizeof f->path, "%s%s%s", point, *inside ? "/" : "", inside) >= (int)sizeof f->path)
                continue;
            size_t n = strlen(f->path);
            while (n > 1 && f->path[n - 1] == '/') f->path[--n] = 0;
            if (is_dir(f->path)) count++;
        }
done:
    free(mountinfo);
    free(own);
    return count;
}

/* --- killing and removing -------------------------------------------------------------------- */

typedef void (*Visit)(const char *path, void *context);

/* Calls `visit` on `path` and every cgroup below it, deepest first (a session may make cgroups of its own). */
static void each_below(const char *path, Visit visit, void *context) {
    DIR *directory = opendir(path);
    struct dirent *entry;
    while (directory && (entry = readdir(directory))) {
        if (entry->d_type != DT_DIR || !strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
        char below[CGROUP_PATH];
        if (snprintf(below, sizeof below, "%s/%s", path, entry->d_name) < (int)sizeof below)
            each_below(below, visit, context);
    }
    if (directory) closedir(directory);
    visit(path, context);
}

/* Applies to each pid listed in `path`/cgroup.procs; how many there were. */
static int each_pid(const char *path, int kill_them) {
    char procs[CGROUP_PATH + 16];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", path);
    FILE *file = fopen(procs, "re");
    int count = 0, pid;
    while (file && fscanf(file, "%d", &pid) == 1) {
        count++;
        if (kill_them) kill(pid, SIGKILL);
    }
    if (file) fclose(file);
    return count;
}

static void kill_listed(const char *path, void *context) {
    (void)context;
    each_pid(path, 1);
}

static void count_listed(const char *path, void *context) {
    *(int *)context += each_pid(path, 0);
}

static void remove_one(const char *path, void *context) {
    if (rmdir(path) && errno != ENOENT) *(int *)context = errno;
}

static void kill_tree(const char *path) {
    char kill_file[CGROUP_PATH + 16];
    if (!is_dir(path)) return;
    snprintf(kill_file, sizeof kill_file, "%s/cgroup.kill", path);
    if (exists(kill_file) && !write_file(kill_file, "1")) return;
    each_below(path, kill_listed, NULL); /* each listed process is killed before it can fork again */
}

static int empty_tree(const char *path) {
    char events[CGROUP_PATH + 16];
    if (!is_dir(path)) return 1;
    snprintf(events, sizeof events, "%s/cgroup.events", path);
    long long populated = field(events, "populated");
    if (populated >= 0) return populated == 0;
    int count = 0;
    each_below(path, count_listed, &count);
    return count == 0;
}

/* Kills what is in the cgroup `path` and below until it is empty (up to `timeout` s), then removes them all. */
static int remove_cgroup_tree(const char *path, double timeout) {
    if (!is_dir(path)) return 0;
    double deadline = monotonic_now() + timeout;
    for (;;) {
        kill_tree(path);
        if (empty_tree(path)) break;
        if (monotonic_now() >= deadline) {
            log_msg(LOG_WARNING, "processes are left in %s %g s after they were killed", path, timeout);
            return -1;
        }
        struct timespec pause = {0, 5000000};
        nanosleep(&pause, NULL);
    }
    int error = 0;
    each_below(path, remove_one, &error);
    if (error) {
        log_msg(LOG_WARNING, "cannot remove the cgroup %s: %s", path, strerror(error));
        return -1;
    }
    return 0;
}

/* --- making the farm's cgroups ----------------------------------------------------------------- */

/* Whether `pid` is a live daemon of the farm cgroup `farm`: a process in `base` (or below `farm`) there. */
static int daemon_alive(const char *pid, const char *base, const char *farm) {
    if (atoi(pid) == (int)getpid()) return 0; /* a dead daemon's, whose pid came back to this one */
    Found *found = xmalloc(sizeof(Found) * MAX_HIERARCHIES);
    int count = process_cgroups(pid, found, MAX_HIERARCHIES), alive = 0;
    size_t n = strlen(farm);
    for (int k = 0; k < count; k++)
        alive |= !strcmp(found[k].path, base) || (!strncmp(found[k].path, farm, n) && found[k].path[n] == '/');
    free(found);
    return alive;
}

/* Kills and removes the farm cgroups of daemons that are gone (killed along with their spawner). */
static void sweep_stale(const char *base) {
    DIR *directory = opendir(base);
    struct dirent *entry;
    while (directory && (entry = readdir(directory))) {
        const char *name = entry->d_name, *digits = name + strlen(FARM_PREFIX);
        if (strncmp(name, FARM_PREFIX, strlen(FARM_PREFIX)) || !*digits || strspn(digits, "0123456789") != strlen(digits))
            continue;
        char farm[CGROUP_PATH];
        if (join(farm, base, name) || daemon_alive(digits, base, farm)) continue;
        log_msg(LOG_WARNING, "removing the cgroup of a board daemon that is gone: %s", farm);
        remove_cgroup_tree(farm, EMPTY_TIMEOUT);
    }
    if (directory) closedir(directory);
}

static int enable(const char *directory, int wanted) {
    char control[CGROUP_PATH + 32], enabled[1024] = "", text[64] = "";
    snprintf(control, sizeof control, "%s/cgroup.subtree_control", directory);
    read_text_file(control, enabled, sizeof enabled);
    if (wanted & CONTROL_MEMORY && !strstr(enabled, "memory")) strcat(text, "+memory ");
    if (wanted & CONTROL_PIDS && !strstr(enabled, "pids")) strcat(text, "+pids");
    return *text ? write_file(control, text) : 0;
}

static const char *named(int controls) {
    return controls == (CONTROL_MEMORY | CONTROL_PIDS) ? "memory and pids" : controls & CONTROL_MEMORY ? "memory" : "pids";
}

/* Enables the wanted controllers the daemon's cgroup offers for the sessions' cgroups below the farm's (moving the
 * daemon into a leaf of its own first where its cgroup holds processes); those enabled. */
static int enable_v2(Hierarchy *h, int wanted) {
    char path[CGROUP_PATH + 32], available[1024] = "";
    snprintf(path, sizeof path, "%s/cgroup.controllers", h->base);
    read_text_file(path, available, sizeof available);
    if (!strstr(available, "memory")) wanted &= ~CONTROL_MEMORY;
    if (!strstr(available, "pids")) wanted &= ~CONTROL_PIDS;
    if (!wanted) return 0;
    if (enable(h->base, wanted)) {
        if (errno != EBUSY) {
            log_msg(LOG_INFO, "cannot enable %s for sessions in %s: %s", named(wanted), h->base, strerror(errno));
            return 0;
        }
        char leaf[CGROUP_PATH], procs[CGROUP_PATH + 16], pid[24];
        if (join(leaf, h->path, DAEMON_LEAF)) return 0;
        snprintf(procs, sizeof procs, "%s/cgroup.procs", leaf);
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        if (mkdir(leaf, 0755) || write_file(procs, pid) || enable(h->base, wanted)) {
            log_msg(LOG_INFO, "cannot enable %s in %s, which holds other processes: %s", named(wanted), h->base,
                    strerror(errno));
            snprintf(procs, sizeof procs, "%s/cgroup.procs", h->base); /* back where it was */
            write_file(procs, pid);
            rmdir(leaf);
            return 0;
        }
        h->leaf = 1;
    }
    if (enable(h->path, wanted)) {
        log_msg(LOG_INFO, "cannot enable %s for sessions in %s: %s", named(wanted), h->path, strerror(errno));
        return 0;
    }
    return wanted;
}

static void describe(const Confinement *c, Buf *out) {
    int bounded = 0;
    for (int k = 0; k < c->count; k++) {
        const Hierarchy *h = &c->hierarchies[k];
        char kill_file[CGROUP_PATH + 16];
        snprintf(kill_file, sizeof kill_file, "%s/cgroup.kill", h->path);
        int has_kill = h->version == 2 && exists(kill_file);
        buf_addf(out, "%scgroup v%d %s (%s%s%s%s%s)", k ? "; " : "", h->version, h->path, has_kill ? "kill" : "",
                 has_kill && h->controls ? ", " : "", h->controls & CONTROL_MEMORY ? "memory" : "",
                 h->controls == (CONTROL_MEMORY | CONTROL_PIDS) ? ", " : "", h->controls & CONTROL_PIDS ? "pids" : "");
        if (!has_kill && !h->controls) buf_adds(out, "membership");
        bounded |= h->controls;
    }
    int fallback = (c->limits.processes && !(bounded & CONTROL_PIDS) ? CONTROL_PIDS : 0) |
                   (c->limits.memory && !(bounded & CONTROL_MEMORY) ? CONTROL_MEMORY : 0);
    if (fallback)
        buf_addf(out, "; %s bounded per process by resource limits only",
                 fallback == (CONTROL_MEMORY | CONTROL_PIDS) ? "processes and memory"
                 : fallback & CONTROL_PIDS                   ? "processes"
                                                             : "memory");
}

void confinement_create(Confinement *c, const SessionLimits *limits) {
    memset(c, 0, sizeof *c);
    c->limits = *limits;
    Found *own = xmalloc(sizeof(Found) * MAX_HIERARCHIES);
    int count = process_cgroups("self", own, MAX_HIERARCHIES), made = 0;
    int wanted = (limits->processes ? CONTROL_PIDS : 0) | (limits->memory ? CONTROL_MEMORY : 0);
    for (int k = 0; k < count; k++) { /* v2 first: what it controls, v1 is not asked for */
        int offered = own[k].controls & wanted & ~made;
        if (own[k].version == 1 && !offered) continue;
        Hierarchy *h = &c->hierarchies[c->count];
        memset(h, 0, sizeof *h);
        h->version = own[k].version;
        snprintf(h->base, sizeof h->base, "%s", own[k].path);
        sweep_stale(h->base);
        if (snprintf(h->path, sizeof h->path, "%s/" FARM_PREFIX "%d", own[k].path, (int)getpid()) >= (int)sizeof h->path)
            continue;
        if (mkdir(h->path, 0755)) {
            log_msg(LOG_DEBUG, "cannot make %s: %s", h->path, strerror(errno));
            continue;
        }
        h->controls = h->version == 2 ? enable_v2(h, wanted) : offered;
        made |= h->controls;
        c->count++;
    }
    free(own);
    if (!c->count) {
        log_msg(LOG_WARNING, "sessions are confined by resource limits only (no writable cgroup: not root, and no "
                "delegated subtree?): processes that leave their process group can outlive a killed daemon; see "
                "docs/security.md");
        return;
    }
    Buf text = {0};
    describe(c, &text);
    log_msg(LOG_INFO, "sessions are confined in cgroups: %s", buf_str(&text));
    buf_free(&text);
}

void confinement_destroy(const Confinement *c) {
    for (int k = 0; k < c->count; k++) {
        const Hierarchy *h = &c->hierarchies[k];
        DIR *directory = opendir(h->path);
        struct dirent *entry;
        while (directory && (entry = readdir(directory))) {
            if (strncmp(entry->d_name, SESSION_PREFIX, strlen(SESSION_PREFIX))) continue;
            char session[CGROUP_PATH];
            if (!join(session, h->path, entry->d_name)) remove_cgroup_tree(session, EMPTY_TIMEOUT);
        }
        if (directory) closedir(directory);
        char leaf[CGROUP_PATH];
        if (join(leaf, h->path, DAEMON_LEAF)) continue;
        if (h->leaf && getpid() == (pid_t)atoi(strrchr(h->path, '-') + 1)) { /* the daemon: back to its own */
            char procs[CGROUP_PATH + 16], pid[24];
            snprintf(procs, sizeof procs, "%s/cgroup.procs", h->base);
            snprintf(pid, sizeof pid, "%d", (int)getpid());
            write_file(procs, pid);
        }
        if (h->leaf && rmdir(leaf) && errno != ENOENT && errno != EBUSY)
            log_msg(LOG_WARNING, "cannot remove the cgroup %s: %s", leaf, strerror(errno));
        if (rmdir(h->path) && errno != ENOENT && errno != EBUSY && errno != ENOTEMPTY)
            log_msg(LOG_WARNING, "cannot remove the cgroup %s: %s", h->path, strerror(errno));
    }
}

/* --- a session's cgroup ------------------------------------------------------------------------ */

static int session_path(const Confinement *c, int k, const char *name, char *out) {
    return snprintf(out, CGROUP_PATH, "%s/%s", c->hierarchies[k].path, name) < CGROUP_PATH ? 0 : -1;
}

static int set_limit(const char *directory, const char *file, uint64_t value) {
    char path[CGROUP_PATH + 32], text[32];
    snprintf(path, sizeof path, "%s/%s", directory, file);
    snprintf(text, sizeof text, "%llu", (unsigned long long)value);
    return exists(path) ? write_file(path, text) : 0;
}

int cgroup_session(Confinement *c, char *name, size_t cap) {
    snprintf(name, cap, SESSION_PREFIX "%u", ++c->sessions);
    for (int k = 0; k < c->count; k++) {
        const Hierarchy *h = &c->hierarchies[k];
        char path[CGROUP_PATH];
        int failed = session_path(c, k, name, path) || mkdir(path, 0755);
        if (!failed && h->controls & CONTROL_PIDS) failed = set_limit(path, "pids.max", c->limits.processes);
        if (!failed && h->controls & CONTROL_MEMORY) {
            if (h->version == 2)
                failed = set_limit(path, "memory.max", c->limits.memory) || set_limit(path, "memory.swap.max", 0) ||
                         set_limit(path, "memory.oom.group", 1);
            else
                failed = set_limit(path, "memory.limit_in_bytes", c->limits.memory) ||
                         set_limit(path, "memory.memsw.limit_in_bytes", c->limits.memory);
        }
        if (failed) {
            int saved = errno;
            for (int j = 0; j <= k; j++)
                if (!session_path(c, j, name, path)) remove_cgroup_tree(path, 0);
            errno = saved;
            return -1;
        }
    }
    return 0;
}

int cgroup_enter(const Confinement *c, const char *name) {
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (int k = 0; k < c->count; k++) {
        char path[CGROUP_PATH], procs[CGROUP_PATH + 16];
        if (session_path(c, k, name, path)) return -1;
        snprintf(procs, sizeof procs, "%s/cgroup.procs", path);
        if (write_file(procs, pid)) {
            log_msg(LOG_ERROR, "the session process cannot enter its cgroup %s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int cgroup_controls(const Confinement *c, int control) {
    for (int k = 0; k < c->count; k++)
        if (c->hierarchies[k].controls & control) return 1;
    return 0;
}

void cgroup_kill(const Confinement *c, const char *name) {
    char path[CGROUP_PATH];
    for (int k = 0; k < c->count; k++)
        if (!session_path(c, k, name, path)) kill_tree(path);
}

int cgroup_remove(const Confinement *c, const char *name) {
    char path[CGROUP_PATH];
    int failed = 0;
    for (int k = 0; k < c->count; k++) /* each, even after one failed */
        failed |= session_path(c, k, name, path) || remove_cgroup_tree(path, EMPTY_TIMEOUT);
    return failed ? -1 : 0;
}

uint64_t cgroup_oom_kills(const Confinement *c, const char *name) {
    char path[CGROUP_PATH], file[CGROUP_PATH + 32];
    for (int k = 0; k < c->count; k++) {
        if (!(c->hierarchies[k].controls & CONTROL_MEMORY) || session_path(c, k, name, path)) continue;
        snprintf(file, sizeof file, "%s/%s", path, c->hierarchies[k].version == 2 ? "memory.events" : "memory.oom_control");
        long long value = field(file, "oom_kill");
        if (value >= 0) return (uint64_t)value;
    }
    return 0;
}

uint64_t cgroup_refused_forks(const Confinement *c, const char *name) {
    char path[CGROUP_PATH], file[CGROUP_PATH + 32];
    uint64_t refused = 0;
    for (int k = 0; k < c->count; k++) {
        if (!(c->hierarchies[k].controls & CONTROL_PIDS) || session_path(c, k, name, path)) continue;
        snprintf(file, sizeof file, "%s/pids.events", path);
        long long value = field(file, "max");
        if (value > 0) refused += (uint64_t)value;
    }
    return refused;
}
