/* Files of the session directory: UPLOAD, DOWNLOAD, REMOVE, LISTDIR, and the path-escape rules of
 * farm.board.session.Session.resolve (docs/protocol.md §4.4). */
#define _GNU_SOURCE
#include "board.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Symbolic links followed while resolving one name, at most; past it the rest stays unresolved. */
#define MAX_LINKS 40

/* `path` without ., .. and repeated slashes, as os.path.normpath makes an absolute path. */
static void normalize(Buf *out, const char *path) {
    buf_add(out, "", 0);
    const char *p = path;
    while (*p) {
        while (*p == '/') p++;
        const char *end = strchrnul(p, '/');
        size_t n = (size_t)(end - p);
        if (n == 0 || (n == 1 && p[0] == '.')) {
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            char *last = out->len ? memrchr(out->data, '/', out->len) : NULL;
            if (last) out->len = (size_t)(last - out->data), out->data[out->len] = 0;
        } else {
            buf_add(out, "/", 1);
            buf_add(out, p, n);
        }
        p = end;
    }
    if (!out->len) buf_add(out, "/", 1);
}

/* `path` (absolute, normalized) with its symbolic links resolved as far as they exist, as os.path.realpath. */
static void real_path(Buf *resolved, const char *path) {
    Buf rest = {0};
    buf_adds(&rest, path);
    size_t pos = 0;
    int links = 0;
    while (!rest.failed && pos < rest.len) {
        const char *start = rest.data + pos, *slash = memchr(start, '/', rest.len - pos);
        size_t n = slash ? (size_t)(slash - start) : rest.len - pos;
        pos += n + (slash ? 1 : 0);
        if (n == 0 || (n == 1 && start[0] == '.')) continue;
        if (n == 2 && start[0] == '.' && start[1] == '.') {
            char *last = resolved->len ? memrchr(resolved->data, '/', resolved->len) : NULL;
            if (last) resolved->len = (size_t)(last - resolved->data), resolved->data[resolved->len] = 0;
            continue;
        }
        size_t before = resolved->len;
        buf_add(resolved, "/", 1);
        buf_add(resolved, start, n);
        struct stat info;
        if (resolved->failed || lstat(resolved->data, &info) || !S_ISLNK(info.st_mode)) continue;
        char target[4096];
        ssize_t length = readlink(resolved->data, target, sizeof target - 1);
        if (length <= 0 || ++links > MAX_LINKS) {
            if (pos < rest.len) {
                buf_add(resolved, "/", 1);
                buf_add(resolved, rest.data + pos, rest.len - pos);
            }
            break;
        }
        Buf next = {0};
        buf_add(&next, target, (size_t)length);
        if (pos < rest.len) {
            buf_add(&next, "/", 1);
            buf_add(&next, rest.data + pos, rest.len - pos);
        }
        buf_free(&rest);
        rest = next;
        pos = 0;
        resolved->len = target[0] == '/' ? 0 : before;
        if (resolved->data) resolved->data[resolved->len] = 0;
    }
    buf_free(&rest);
    if (!resolved->len) buf_add(resolved, "/", 1);
}

static int inside(const char *path, const char *root) {
    size_t n = strlen(root);
    return strncmp(path, root, n) == 0 && (path[n] == 0 || path[n] == '/' || (n == 1 && root[0] == '/'));
}

static int escape(Session *s, const char *fmt, const char *name, size_t n) {
    Buf quoted = {0};
    py_repr(&quoted, name, n);
    fail(s, "PathEscapeError", fmt, buf_str(&quoted));
    buf_free(&quoted);
    return -1;
}

/* The absolute path of `name` inside the session directory (malloc'd), or PathEscapeError. */
static int resolve_text(Session *s, const char *name, size_t n, int follow, char **out) {
    *out = NULL;
    if (!n || memchr(name, 0, n)) return escape(s, "file name %s is not a non-empty string", name, n);
    if (name[0] == '/')
        return escape(s, "%s is an absolute path; names are relative to the session directory", name, n);
    Buf joined = {0}, normal = {0}, path = {0};
    buf_addf(&joined, "%s/%s", s->root, name);
    normalize(&normal, buf_str(&joined));
    if (follow) {
        real_path(&path, buf_str(&normal));
    } else {
        char *slash = strrchr(normal.data, '/');
        *slash = 0;
        real_path(&path, normal.data[0] ? normal.data : "/");
        if (path.len > 1) buf_add(&path, "/", 1);
        buf_adds(&path, slash + 1);
    }
    int ok = !joined.failed && !normal.failed && !path.failed && inside(buf_str(&path), s->root);
    buf_free(&joined);
    buf_free(&normal);
    if (!ok) {
        buf_free(&path);
        return escape(s, "%s points outside the session directory", name, n);
    }
    *out = path.data;
    return 0;
}

int resolve(Session *s, const JValue *name, int follow, char **out) {
    return resolve_text(s, name->s, name->len, follow, out);
}

static int named(Session *s, const JValue *meta, const char *fallback, int follow, char **path) {
    const char *text;
    size_t n;
    if (field_str(s, meta, "name", fallback, &text, &n)) return -1;
    return resolve_text(s, text, n, follow, path);
}

static const char *relative(Session *s, const char *path) {
    size_t n = strlen(s->root);
    return path[n] ? path + n + 1 : ".";
}

/* --- the quota --------------------------------------------------------------------------------- */

static uint64_t usage_bytes;

static int count_entry(const char *path, const struct stat *info, int flag, struct FTW *ftw) {
    (void)path, (void)ftw;
    if (flag == FTW_F || flag == FTW_SL || flag == FTW_SLN) usage_bytes += (uint64_t)info->st_size;
    return 0;
}

static uint64_t directory_bytes(const char *root) {
    usage_bytes = 0;
    nftw(root, count_entry, 32, FTW_PHYS);
    return usage_bytes;
}

static void megabytes(char *out, size_t cap, uint64_t size) {
    if (size % (1 << 20)) snprintf(out, cap, "%.1f", (double)size / (1 << 20));
    else snprintf(out, cap, "%llu", (unsigned long long)(size >> 20));
}

static void quota_refusal(Session *s, const JValue *meta, uint64_t nbytes, char *out, size_t cap) {
    uint64_t quota = s->order->quota;
    if (!quota || !nbytes) return;
    const JValue *name = json_get(meta, "name");
    uint64_t replaced = 0;
    char *path = NULL;
    struct stat info;
    if (name && name->type == J_STRING && resolve(s, name, 1, &path) == 0 && lstat(path, &info) == 0)
        replaced = (uint64_t)info.st_size;
    free(path);
    uint64_t held = directory_bytes(s->root);
    uint64_t after = held - (replaced < held ? replaced : held) + nbytes;
    if (after <= quota) return;
    char total[32], limit[32];
    megabytes(total, sizeof total, after);
    megabytes(limit, sizeof limit, quota);
    Buf quoted = {0};
    if (name && name->type == J_STRING) py_repr(&quoted, name->s, name->len);
    else buf_adds(&quoted, "None");
    snprintf(out, cap, "uploading %.300s (%llu bytes) would take the session's directory to %s MB, over its quota "
             "of %s MB", buf_str(&quoted), (unsigned long long)nbytes, total, limit);
    buf_free(&quoted);
}

/* --- UPLOAD ------------------------------------------------------------------------------------ */

/* Where an upload's payload lands: a new temporary file in the session directory, mapped (not memory). */
int upload_begin(Session *s, const JValue *meta, uint64_t nbytes, Upload *u, char *why, size_t whylen) {
    memset(u, 0, sizeof *u);
    quota_refusal(s, meta, nbytes, u->refusal, sizeof u->refusal);
    if (u->refusal[0]) return 0;
    Buf path = {0};
    buf_addf(&path, "%s/.upload-XXXXXX", s->root);
    if (path.failed) return snprintf(why, whylen, "out of memory"), -1;
    int fd = mkstemp(path.data);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        buf_free(&path);
        return -1;
    }
    u->path = path.data;
    u->size = nbytes;
    if (nbytes) {
        if (ftruncate(fd, (off_t)nbytes)) {
            snprintf(why, whylen, "%s", strerror(errno));
            close(fd);
            return -1;
        }
        u->map = mmap(NULL, (size_t)nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (u->map == MAP_FAILED) {
            u->map = NULL;
            snprintf(why, whylen, "%s", strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    return 0;
}

void upload_abort(Upload *u) {
    if (u->map) munmap(u->map, (size_t)u->size);
    if (u->path) unlink(u->path);
    free(u->path);
    memset(u, 0, sizeof *u);
}

static int make_parents(Session *s, const char *path) {
    char *copy = xstrdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        struct stat info; /* as Python's os.makedirs: an existing name that is not a directory fails, EEXIST */
        int error = mkdir(copy, 0777) ? errno : 0;
        if (error == EEXIST && !stat(copy, &info) && S_ISDIR(info.st_mode)) error = 0;
        if (error) {
            fail_errno(s, error, copy);
            free(copy);
            return -1;
        }
        *p = '/';
    }
    free(copy);
    return 0;
}

int op_upload(Session *s, const JValue *meta, Upload *u, Reply *r) {
    if (u->refusal[0]) return fail(s, "QuotaError", "%s", u->refusal);
    const char *name;
    size_t n;
    char *path = NULL;
    if (field_str(s, meta, "name", NULL, &name, &n) || resolve_text(s, name, n, 1, &path)) return -1;
    int status = 0;
    if (!strcmp(path, s->root)) status = escape(s, "%s names the session directory itself", name, n);
    else if (make_parents(s, path)) status = -1;
    /* a new file, not the old one rewritten: a library loaded from the old file keeps its pages */
    else if (rename(u->path, path)) status = fail_errno(s, errno, path);
    if (status == 0) {
        free(u->path);
        u->path = NULL;
        buf_adds(&r->meta, "{\"name\":");
        const char *stored = relative(s, path);
        json_string(&r->meta, stored, strlen(stored));
        buf_addf(&r->meta, ",\"size\":%llu}", (unsigned long long)u->size);
    }
    free(path);
    return status;
}

/* --- DOWNLOAD, REMOVE, LISTDIR ------------------------------------------------------------------ */

int op_download(Session *s, const JValue *meta, Reply *r) {
    char *path;
    if (named(s, meta, NULL, 1, &path)) return -1;
    int status = 0, fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat info;
    if (fd < 0) status = fail_errno(s, errno, path);
    else if (fstat(fd, &info)) status = fail_errno(s, errno, path);
    else if (S_ISDIR(info.st_mode)) status = fail_errno(s, EISDIR, path);
    else if ((uint64_t)info.st_size > s->order->max_message_size)
        status = fail(s, "FarmError", "%s is %lld bytes, more than the message limit of %llu", path,
                      (long long)info.st_size, (unsigned long long)s->order->max_message_size);
    else if (info.st_size) {
        void *map = mmap(NULL, (size_t)info.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) status = fail_errno(s, errno, path);
        else r->mapped = map, r->payload = map, r->size = (uint64_t)info.st_size;
    }
    if (status == 0) buf_addf(&r->meta, "{\"size\":%lld}", (long long)info.st_size);
    if (fd >= 0) close(fd);
    free(path);
    return status;
}

int op_remove(Session *s, const JValue *meta, Reply *r) {
    (void)r;
    const char *name;
    size_t n;
    char *path = NULL;
    if (field_str(s, meta, "name", NULL, &name, &n) || resolve_text(s, name, n, 0, &path)) return -1;
    int status = 0;
    struct stat info;
    if (!strcmp(path, s->root)) status = escape(s, "%s names the session directory itself", name, n);
    else if (lstat(path, &info) == 0 && S_ISDIR(info.st_mode)) {
        remove_tree(path);
        if (lstat(path, &info) == 0) status = fail_errno(s, ENOTEMPTY, path);
    } else if (unlink(path)) status = fail_errno(s, errno, path);
    free(path);
    return status;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int op_listdir(Session *s, const JValue *meta, Reply *r) {
    char *path;
    if (named(s, meta, ".", 1, &path)) return -1;
    DIR *directory = opendir(path);
    if (!directory) {
        int status = fail_errno(s, errno, path);
        free(path);
        return status;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *entry;
    while ((entry = readdir(directory))) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[count++] = xstrdup(entry->d_name);
    }
    closedir(directory);
    if (count) qsort(names, count, sizeof *names, by_name);
    buf_add(&r->owned, "[", 1);
    for (size_t k = 0; k < count; k++) {
        if (k) buf_add(&r->owned, ",", 1);
        json_string(&r->owned, names[k], strlen(names[k]));
        free(names[k]);
    }
    buf_add(&r->owned, "]", 1);
    free(names);
    free(path);
    return r->owned.failed ? fail(s, "MemoryError", "no memory for the listing") : 0;
}
