/* The command line: the options of `python -m farm.server` (farm/board/config.py), the same names and defaults. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MB (1ull << 20)

static const char USAGE[] =
    "usage: farm-board [--host HOST] [--port PORT] [--port-end PORT_END] [--key KEY] [--work-dir WORK_DIR]\n"
    "                  [--max-message-size N] [--session-quota MB] [--session-quota-files N]\n"
    "                  [--max-session-time SECONDS] [--handshake-timeout SECONDS] [--name NAME]\n"
    "                  [--secret-file PATH] [--tracker HOST:PORT] [--custom-addr ADDR] [--through-proxy]\n"
    "                  [--max-unproven N] [--max-unproven-per-address N]\n"
    "                  [--tls-cert PATH] [--tls-key PATH] [--tls-ca PATH] [--tls-server-name NAME]\n"
    "                  [--log-level {DEBUG,INFO,WARNING,ERROR}]\n"
    "The native board server: the same options as `python -m farm.server` (see docs/native-board.md).\n";

static int usage_error(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "%s", USAGE);
    fprintf(stderr, "farm-board: error: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    return 2;
}

static int whole(const char *name, const char *text, uint64_t low, uint64_t *out) {
    if (!*text || strspn(text, "0123456789") != strlen(text) || strlen(text) > 19)
        return usage_error("argument %s: %s is not a whole number", name, text);
    *out = strtoull(text, NULL, 10);
    if (*out < low) return usage_error("argument %s: %s is too small", name, text);
    return 0;
}

static int seconds(const char *name, const char *text, int positive, double *out) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (!*text || *end || isnan(value) || isinf(value) || (positive ? value <= 0 : value < 0))
        return usage_error("argument %s: %s is not a number of seconds", name, text);
    *out = value;
    return 0;
}

static int integer(const char *name, const char *text, int *out) {
    char *end;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < -1000000 || value > 1000000)
        return usage_error("argument %s: invalid int value: '%s'", name, text);
    *out = (int)value;
    return 0;
}

/* The TLS options: refused, never ignored, by a daemon built without TLS. */
static const char *const TLS_OPTIONS[] = {"--tls-cert", "--tls-key", "--tls-ca", "--tls-server-name"};

int parse_options(int argc, char **argv, Options *o) {
    *o = (Options){.host = "127.0.0.1", .port = 9090, .port_end = 9199, .key = "", .name = "",
                   .max_message_size = 4ull << 30, .session_quota = 1024 * MB, .session_quota_files = 100000,
                   .max_session_time = 3600, .handshake_timeout = 10, .max_unproven = 64,
                   .max_unproven_per_address = 16};
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    o->limits = (SessionLimits){.open_files = 1024, .processes = 1024,
                                .memory = pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size / 2 : 0};
    o->secret_file = getenv("REMOTEDEV_SECRET_FILE");
    if (o->secret_file && !*o->secret_file) o->secret_file = NULL;
    static const char *const TLS_ENV[] = {"REMOTEDEV_TLS_CERT", "REMOTEDEV_TLS_KEY", "REMOTEDEV_TLS_CA",
                                          "REMOTEDEV_TLS_SERVER_NAME"};
    const char **tls_fields[] = {&o->tls.cert, &o->tls.key, &o->tls.ca, &o->tls.server_name};
    for (size_t k = 0; k < 4; k++) {
        const char *value = getenv(TLS_ENV[k]);
        *tls_fields[k] = value && *value ? value : NULL;
        if (*tls_fields[k] && k < 3 && !tls_built_in()) {
            fprintf(stderr, "farm-board: $%s is set, but this farm-board was built without TLS (OpenSSL was not "
                            "found for its target; see docs/native-board.md)\n", TLS_ENV[k]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i], *value = NULL, name[64];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            printf("%s", USAGE);
            return 1;
        }
        if (!strcmp(arg, "--version")) {
            printf("farm-board %s\n", FARM_VERSION);
            return 1;
        }
        char *equals = strchr(arg, '=');
        size_t n = equals ? (size_t)(equals - arg) : strlen(arg);
        if (strncmp(arg, "--", 2) || n >= sizeof name) return usage_error("unrecognized arguments: %s%s", arg, "");
        memcpy(name, arg, n);
        name[n] = 0;
        for (size_t k = 0; k < sizeof TLS_OPTIONS / sizeof TLS_OPTIONS[0]; k++)
            if (!strcmp(name, TLS_OPTIONS[k]) && !tls_built_in()) {
                fprintf(stderr, "farm-board: %s: this farm-board was built without TLS (OpenSSL was not found for "
                                "its target; see docs/native-board.md)\n", name);
                return 2;
            }
        if (!strcmp(name, "--through-proxy") && !equals) {
            o->through_proxy = 1;
            continue;
        }
        if (equals) value = equals + 1;
        else if (i + 1 < argc) value = argv[++i];
        else return usage_error("argument %s: expected one argument%s", name, "");
        uint64_t number;
        int status = 0;
        if (!strcmp(name, "--host")) o->host = value;
        else if (!strcmp(name, "--port")) status = integer(name, value, &o->port);
        else if (!strcmp(name, "--port-end")) status = integer(name, value, &o->port_end);
        else if (!strcmp(name, "--key")) o->key = value;
        else if (!strcmp(name, "--name")) o->name = value;
        else if (!strcmp(name, "--work-dir")) o->work_dir = value;
        else if (!strcmp(name, "--secret-file")) o->secret_file = *value ? value : NULL;
        else if (!strcmp(name, "--custom-addr")) o->custom_addr = value;
        else if (!strcmp(name, "--tls-cert")) o->tls.cert = *value ? value : NULL;
        else if (!strcmp(name, "--tls-key")) o->tls.key = *value ? value : NULL;
        else if (!strcmp(name, "--tls-ca")) o->tls.ca = *value ? value : NULL;
        else if (!strcmp(name, "--tls-server-name")) o->tls.server_name = *value ? value : NULL;
        else if (!strcmp(name, "--session-user")) o->session_user_name = value;
        else if (!strcmp(name, "--session-processes")) status = whole(name, value, 0, &o->limits.processes);
        else if (!strcmp(name, "--session-open-files")) status = whole(name, value, 0, &o->limits.open_files);
        else if (!strcmp(name, "--session-memory")) {
            if (!(status = whole(name, value, 0, &number))) {
                if (number > UINT64_MAX / MB) return usage_error("argument %s: %s is too large", name, value);
                o->limits.memory = number * MB;
            }
        }
        else if (!strcmp(name, "--tracker")) {
            const char *colon = strrchr(value, ':');
            int port = colon ? atoi(colon + 1) : 0;
            if (!colon || colon == value || strspn(colon + 1, "0123456789") != strlen(colon + 1) || port < 1 ||
                port > 65535)
                return usage_error("argument --tracker: '%s' is not HOST:PORT with a port in 1..65535%s", value, "");
            o->tracker = value;
        }
        else if (!strcmp(name, "--max-message-size")) status = whole(name, value, 0, &o->max_message_size);
        else if (!strcmp(name, "--session-quota")) {
            if (!(status = whole(name, value, 0, &number))) {
                if (number > UINT64_MAX / MB) return usage_error("argument %s: %s is too large", name, value);
                o->session_quota = number * MB;
            }
        } else if (!strcmp(name, "--session-quota-files")) status = whole(name, value, 0, &o->session_quota_files);
        else if (!strcmp(name, "--max-session-time")) status = seconds(name, value, 0, &o->max_session_time);
        else if (!strcmp(name, "--handshake-timeout")) status = seconds(name, value, 1, &o->handshake_timeout);
        else if (!strcmp(name, "--max-unproven") || !strcmp(name, "--max-unproven-per-address")) {
            if (!(status = whole(name, value, 1, &number)))
                *(name[14] ? &o->max_unproven_per_address : &o->max_unproven) = number > 100000 ? 100000 : (int)number;
        } else if (!strcmp(name, "--log-level")) {
            static const char *const LEVELS[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
            int found = -1;
            for (int k = 0; k < 4; k++)
                if (!strcmp(value, LEVELS[k])) found = k;
            if (found < 0) return usage_error("argument --log-level: invalid choice: '%s'%s", value, "");
            log_level = 10 * (found + 1);
        } else {
            return usage_error("unrecognized arguments: %s%s", arg, "");
        }
        if (status) return status;
    }
    o->limits.quota = o->session_quota;
    o->tls_enabled = o->tls.cert || o->tls.key || o->tls.ca;
    if (o->port < 0 || o->port > 65535)
        return usage_error("argument --port: %s is outside the TCP port range 0..65535%s", "the port", "");
    return 0;
}
