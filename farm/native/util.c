/* Logging, growable buffers and small helpers of the native board. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int log_level = LOG_INFO;

static const char *level_name(int level) {
    switch (level) {
    case LOG_DEBUG: return "DEBUG";
    case LOG_INFO: return "INFO";
    case LOG_WARNING: return "WARNING";
    default: return "ERROR";
    }
}

/* One line per record, as the Python daemons log: control characters in the text are shown escaped. */
void log_msg(int level, const char *fmt, ...) {
    if (level < log_level) return;
    char text[16384], line[4 * 16384 + 128];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    localtime_r(&now.tv_sec, &tm);
    size_t at = strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    at += (size_t)snprintf(line + at, sizeof line - at, ",%03ld %s farm.server: ", now.tv_nsec / 1000000,
                           level_name(level));
    for (const unsigned char *p = (const unsigned char *)text; *p && at < sizeof line - 8; p++) {
        if (*p < 0x20 || *p == 0x7f) at += (size_t)snprintf(line + at, sizeof line - at, "\\x%02x", *p);
        else line[at++] = (char)*p;
    }
    line[at++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, at);
    (void)ignored;
}

void buf_add(Buf *b, const void *data, size_t n) {
    if (b->failed || n == 0) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_adds(Buf *b, const char *text) { buf_add(b, text, strlen(text)); }

void buf_vaddf(Buf *b, const char *fmt, va_list args) {
    char small[512];
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(small, sizeof small, fmt, copy);
    va_end(copy);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = 1;
        return;
    }
    vsnprintf(big, (size_t)n + 1, fmt, args);
    buf_add(b, big, (size_t)n);
    free(big);
}

void buf_addf(Buf *b, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    buf_vaddf(b, fmt, args);
    va_end(args);
}

void buf_reset(Buf *b) {
    b->len = 0;
    b->failed = 0;
}

void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

const char *buf_str(Buf *b) { return b->data && !b->failed ? b->data : ""; }

void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        log_msg(LOG_ERROR, "out of memory (%zu bytes)", n);
        abort();
    }
    return p;
}

void release_free_memory(void) {
#ifdef __GLIBC__
    malloc_trim(0); /* the heap's free pages back to the system, not only its top */
#endif
}

/* Whether a line of /proc/self/maps is a private read-only executable mapping of a file: code, never written. */
static int is_code_mapping(const char *line, unsigned long *start, unsigned long *end) {
    char perms[5];
    int path_at = 0;
    if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", start, end, perms, &path_at) != 3) return 0;
    return !strcmp(perms, "r-xp") && path_at && line[path_at] == '/';
}

void drop_code_pages(void) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char text[4096]; /* on the stack, read a piece at a time: no page of the heap or .bss is touched for it */
    size_t held = 0;
    for (;;) {
        ssize_t got = read(fd, text + held, sizeof text - 1 - held);
        if (got <= 0) break;
        held += (size_t)got;
        text[held] = 0;
        char *line = text, *newline;
        while ((newline = strchr(line, '\n'))) {
            *newline = 0;
            unsigned long start, end;
            if (is_code_mapping(line, &start, &end)) madvise((void *)start, end - start, MADV_DONTNEED);
            line = newline + 1;
        }
        held = (size_t)(text + held - line);
        if (held == sizeof text - 1) held = 0; /* a line longer than the buffer: not a mapping worth reading */
        memmove(text, line, held);
    }
    close(fd);
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

double monotonic_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

double wall_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t more;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) more = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) more = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) more = 3, cp = c & 0x07, min = 0x10000;
        else return 0;
        if (n - i <= more) return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += more + 1;
    }
    return 1;
}

uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
void put_u32(unsigned char *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (unsigned char)(v >> (8 * k));
}
void put_u64(unsigned char *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (unsigned char)(v >> (8 * k));
}

int read_text_file(const char *path, char *out, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t total = 0;
    while (total + 1 < cap) {
        ssize_t n = read(fd, out + total, cap - 1 - total);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        total += (size_t)n;
    }
    close(fd);
    while (total && (out[total - 1] == '\n' || out[total - 1] == ' ' || out[total - 1] == '\r')) total--;
    out[total] = 0;
    return (int)total;
}

static int remove_entry(const char *path, const struct stat *info, int flag, struct FTW *ftw) {
    (void)info, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

int remove_tree(const char *path) { return nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS); }

const char *signal_name(int number) {
    static const struct {
        int number;
        const char *name;
    } names[] = {
        {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
        {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
        {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
        {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGCHLD, "SIGCHLD"},
        {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"}, {SIGXCPU, "SIGXCPU"},
        {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (names[k].number == number) return names[k].name;
    return "unknown signal";
}

/* Whether Python's str.isprintable() holds for code point `cp` (the control, format, separator and private-use
 * ranges; unassigned code points are taken as printable). */
static int printable(uint32_t cp) {
    static const uint32_t NOT[][2] = {
        {0x00, 0x1f},       {0x7f, 0xa0},       {0xad, 0xad},       {0x600, 0x605},     {0x61c, 0x61c},
        {0x6dd, 0x6dd},     {0x70f, 0x70f},     {0x1680, 0x1680},   {0x180e, 0x180e},   {0x2000, 0x200f},
        {0x2028, 0x202f},   {0x205f, 0x2064},   {0x2066, 0x206f},   {0x3000, 0x3000},   {0xd800, 0xf8ff},
        {0xfeff, 0xfeff},   {0xfff9, 0xfffb},   {0xfffe, 0xffff},   {0xe0001, 0xe007f}, {0xf0000, 0x10ffff},
    };
    for (size_t k = 0; k < sizeof NOT / sizeof NOT[0]; k++)
        if (cp >= NOT[k][0] && cp <= NOT[k][1]) return 0;
    return 1;
}

/* The next code point of UTF-8 text at s[*i] (a byte that is not UTF-8 as the surrogate U+DC80..U+DCFF, as
 * Python's surrogateescape decodes it); *i moves past it. */
static uint32_t next_code_point(const unsigned char *s, size_t n, size_t *i) {
    unsigned c = s[*i];
    size_t more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
    if (more == 0 || more == 9 || *i + more >= n || !valid_utf8(s + *i, more + 1)) {
        (*i)++;
        return c < 0x80 ? c : 0xDC00 + c;
    }
    uint32_t cp = c & (0x3F >> more);
    for (size_t k = 1; k <= more; k++) cp = (cp << 6) | (s[*i + k] & 0x3F);
    *i += more + 1;
    return cp;
}

size_t utf8_chars(const char *text, size_t n) {
    size_t chars = 0;
    for (size_t i = 0; i < n; chars++) next_code_point((const unsigned char *)text, n, &i);
    return chars;
}

size_t utf8_offset(const char *text, size_t n, size_t chars) {
    size_t i = 0;
    for (size_t k = 0; k < chars && i < n; k++) next_code_point((const unsigned char *)text, n, &i);
    return i;
}

void py_repr_limit(Buf *b, const char *text, size_t n, size_t max_chars) {
    const unsigned char *s = (const unsigned char *)text;
    size_t chars = 0;
    int single = 0, twice = 0;
    for (size_t i = 0; i < n && chars < max_chars; chars++) {
        uint32_t cp = next_code_point(s, n, &i);
        single |= cp == '\'', twice |= cp == '"';
    }
    char quote = single && !twice ? '"' : '\'';
    buf_add(b, &quote, 1);
    chars = 0;
    for (size_t i = 0; i < n && chars < max_chars; chars++) {
        size_t at = i;
        uint32_t cp = next_code_point(s, n, &i);
        if (cp == '\\' || cp == (uint32_t)quote) buf_addf(b, "\\%c", (char)cp);
        else if (cp == '\t') buf_adds(b, "\\t");
        else if (cp == '\n') buf_adds(b, "\\n");
        else if (cp == '\r') buf_adds(b, "\\r");
        else if (printable(cp)) buf_add(b, s + at, i - at);
        else if (cp < 0x100) buf_addf(b, "\\x%02x", cp);
        else if (cp < 0x10000) buf_addf(b, "\\u%04x", cp);
        else buf_addf(b, "\\U%08x", cp);
    }
    buf_add(b, &quote, 1);
}

/* A non-blocking TCP connection to host:port on its way (keepalive on); -1 and why not (of `what`) in `why`. */
int dial(const char *host, int port, const char *what, char *why, size_t whylen) {
    struct addrinfo hints = {.ai_family = strchr(host, ':') ? AF_INET6 : AF_INET, .ai_socktype = SOCK_STREAM}, *found;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int error = getaddrinfo(host, service, &hints, &found);
    if (error) {
        snprintf(why, whylen, "cannot reach the %s at %s:%d: %s", what, host, port, gai_strerror(error));
        return -1;
    }
    int fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (fd < 0 || (connect(fd, found->ai_addr, found->ai_addrlen) && errno != EINPROGRESS)) {
        snprintf(why, whylen, "cannot reach the %s at %s:%d: %s", what, host, port, strerror(errno));
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    return fd;
}
