/* TLS on the board's connections (OpenSSL), as farm/net/tls.py: the board presents its certificate to whoever
 * connects, and checks the tracker's or the proxy's against --tls-ca and the name it dialled (or
 * --tls-server-name). Built in with -DFARM_TLS (farm/ops/native.py, where OpenSSL is found for the target); without
 * it these functions only refuse, and options.c refuses the --tls-* options before any of them is called. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int tls_looks_like(const unsigned char *data, size_t n) { /* farm.protocol.peers.looks_like_tls */
    return n >= 1 && data[0] == 0x16 && (n < 2 || data[1] == 3);
}

#ifdef FARM_TLS

/* OpenSSL's headers only: libssl (and libcrypto, which it needs) is loaded by tls_load(), so a daemon without TLS
 * never maps them (an idle board stays small). The functions used are resolved into `lib`, typed as the headers
 * declare them; the headers' macros that stand for functions (SSL_CTX_set_mode, SSL_set_tlsext_host_name, ...)
 * are written as the functions they stand for. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <dlfcn.h>
#include <poll.h>

#define OPENSSL_FUNCTIONS(F)                                                                                    \
    F(ERR_peek_last_error) F(ERR_reason_error_string) F(ERR_clear_error) F(TLS_server_method)                   \
    F(TLS_client_method) F(SSL_CTX_new) F(SSL_CTX_free) F(SSL_CTX_ctrl) F(SSL_CTX_use_certificate_chain_file)   \
    F(SSL_CTX_use_PrivateKey_file) F(SSL_CTX_check_private_key) F(SSL_CTX_load_verify_locations)                \
    F(SSL_CTX_set_default_verify_paths) F(SSL_CTX_set_verify) F(SSL_new) F(SSL_free) F(SSL_set_fd) F(SSL_ctrl)  \
    F(SSL_set_accept_state) F(SSL_set_connect_state) F(SSL_get0_param) F(X509_VERIFY_PARAM_set_hostflags)       \
    F(X509_VERIFY_PARAM_set1_ip_asc) F(X509_VERIFY_PARAM_set1_host) F(SSL_get_error) F(SSL_do_handshake)        \
    F(SSL_get_verify_result) F(X509_verify_cert_error_string) F(SSL_read_ex) F(SSL_write_ex) F(SSL_shutdown)

#define AS_MEMBER(name) __typeof__(&name) name;
static struct {
    OPENSSL_FUNCTIONS(AS_MEMBER)
} lib;

/* The sonames tried, the one of the headers built against first (OpenSSL 3's, else 1.1's). */
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
static const char *const SONAMES[] = {"libssl.so.3", "libssl.so.1.1"};
#else
static const char *const SONAMES[] = {"libssl.so.1.1", "libssl.so.3"};
#endif

/* Loads libssl (once) and resolves every function of `lib` in it and its libcrypto: 0, or -1 (logged). */
static int load_openssl(void) {
    static void *handle;
    if (handle) return 0;
    const char *failed = NULL;
    for (size_t k = 0; k < sizeof SONAMES / sizeof SONAMES[0] && !handle; k++)
        handle = dlopen(SONAMES[k], RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        log_msg(LOG_ERROR, "TLS needs OpenSSL on the board: cannot load %s (nor %s): %s", SONAMES[0], SONAMES[1],
                dlerror());
        return -1;
    }
#define RESOLVE(name) \
    if (!failed && !(*(void **)&lib.name = dlsym(handle, #name))) failed = #name;
    OPENSSL_FUNCTIONS(RESOLVE)
#undef RESOLVE
    if (failed) {
        log_msg(LOG_ERROR, "TLS needs OpenSSL 1.1.1 or later on the board: the loaded libssl lacks %s", failed);
        dlclose(handle);
        handle = NULL;
        memset(&lib, 0, sizeof lib);
        return -1;
    }
    return 0;
}

static SSL_CTX *server_ctx, *client_ctx;
static const char *server_name; /* --tls-server-name: the name every daemon's certificate carries */

int tls_built_in(void) { return 1; }

int tls_on(void) { return server_ctx || client_ctx; }

/* The reason of the last OpenSSL error, as Python's ssl module names it (e.g. "WRONG_VERSION_NUMBER"). */
static void last_reason(char *out, size_t cap) {
    unsigned long code = lib.ERR_peek_last_error();
    const char *reason = code ? lib.ERR_reason_error_string(code) : NULL;
    snprintf(out, cap, "%s", reason ? reason : "unknown error");
    for (char *p = out; *p; p++) *p = *p == ' ' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    lib.ERR_clear_error();
}

/* A file that cannot be opened, in the system's words (as Python's ssl module says it). */
static int unreadable(const char *path, char *why, size_t whylen) {
    FILE *file = fopen(path, "r");
    if (file) {
        fclose(file);
        return 0;
    }
    snprintf(why, whylen, "%s", strerror(errno));
    return -1;
}

int tls_load(const TlsOptions *t, int listens, int dials) {
    char why[256];
    if (load_openssl()) return -1;
    server_name = t->server_name;
    if (listens) {
        if (!t->cert || !t->key) {
            log_msg(LOG_ERROR, "a daemon that listens with TLS needs both --tls-cert and --tls-key");
            return -1;
        }
        if (unreadable(t->cert, why, sizeof why) || unreadable(t->key, why, sizeof why)) {
            log_msg(LOG_ERROR, "cannot load the TLS certificate %s with its key %s: %s", t->cert, t->key, why);
            return -1;
        }
        server_ctx = lib.SSL_CTX_new(lib.TLS_server_method());
        if (!server_ctx || !lib.SSL_CTX_ctrl(server_ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL) ||
            lib.SSL_CTX_use_certificate_chain_file(server_ctx, t->cert) != 1 ||
            lib.SSL_CTX_use_PrivateKey_file(server_ctx, t->key, SSL_FILETYPE_PEM) != 1 ||
            lib.SSL_CTX_check_private_key(server_ctx) != 1) {
            last_reason(why, sizeof why);
            log_msg(LOG_ERROR, "cannot load the TLS certificate %s with its key %s: %s", t->cert, t->key, why);
            return -1;
        }
        lib.SSL_CTX_ctrl(server_ctx, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    }
    if (dials) {
        if (!t->ca) {
            log_msg(LOG_ERROR, "connecting with TLS needs --tls-ca (the certificate authority that signed the farm's "
                    "certificates, or 'system' for the system's)");
            return -1;
        }
        if (strcmp(t->ca, "system") && unreadable(t->ca, why, sizeof why)) {
            log_msg(LOG_ERROR, "cannot load the TLS CA %s: %s", t->ca, why);
            return -1;
        }
        client_ctx = lib.SSL_CTX_new(lib.TLS_client_method());
        int loaded = client_ctx && lib.SSL_CTX_ctrl(client_ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL) &&
                     (strcmp(t->ca, "system") ? lib.SSL_CTX_load_verify_locations(client_ctx, t->ca, NULL)
                                              : lib.SSL_CTX_set_default_verify_paths(client_ctx)) == 1;
        if (!loaded) {
            last_reason(why, sizeof why);
            log_msg(LOG_ERROR, "cannot load the TLS CA %s: %s", t->ca, why);
            return -1;
        }
        lib.SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, NULL);
        lib.SSL_CTX_ctrl(client_ctx, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    }
    return 0;
}

void tls_unload(void) {
    if (!lib.SSL_CTX_free) return; /* OpenSSL was never loaded */
    lib.SSL_CTX_free(server_ctx);
    lib.SSL_CTX_free(client_ctx);
    server_ctx = client_ctx = NULL;
}

TlsConn *tls_new(int fd, int server_side, const char *host) {
    SSL *ssl = lib.SSL_new(server_side ? server_ctx : client_ctx);
    if (!ssl || !lib.SSL_set_fd(ssl, fd)) {
        lib.SSL_free(ssl);
        lib.ERR_clear_error();
        return NULL;
    }
    if (server_side) lib.SSL_set_accept_state(ssl);
    else {
        const char *name = server_name ? server_name : host;
        unsigned char address[16];
        int literal = inet_pton(AF_INET, name, address) == 1 || inet_pton(AF_INET6, name, address) == 1;
        lib.SSL_set_connect_state(ssl);
        X509_VERIFY_PARAM *param = lib.SSL_get0_param(ssl);
        lib.X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* an address is checked against the certificate's IP addresses, and named to it by no SNI (as Python) */
        if (literal ? !lib.X509_VERIFY_PARAM_set1_ip_asc(param, name)
                    : !lib.SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)name) || !lib.X509_VERIFY_PARAM_set1_host(param, name, 0)) {
            lib.SSL_free(ssl);
            lib.ERR_clear_error();
            return NULL;
        }
    }
    return (TlsConn *)ssl;
}

/* An OpenSSL result in the functions' terms: -2 (and the events to wait for) to try again, -1 failed. */
static int outcome(SSL *ssl, int result, short *events) {
    switch (lib.SSL_get_error(ssl, result)) {
    case SSL_ERROR_WANT_READ: *events = POLLIN; return -2;
    case SSL_ERROR_WANT_WRITE: *events = POLLOUT; return -2;
    case SSL_ERROR_ZERO_RETURN: return 0;
    default: return -1;
    }
}

int tls_handshake(TlsConn *c, short *events, char *why, size_t whylen) {
    SSL *ssl = (SSL *)c;
    lib.ERR_clear_error();
    int result = lib.SSL_do_handshake(ssl);
    if (result == 1) return 1;
    int kind = lib.SSL_get_error(ssl, result);
    if (outcome(ssl, result, events) == -2) return 0;
    long verified = lib.SSL_get_verify_result(ssl);
    char reason[256];
    last_reason(reason, sizeof reason);
    if (verified != X509_V_OK)
        snprintf(why, whylen, "the certificate was refused: %s", lib.X509_verify_cert_error_string(verified));
    else if (!strcmp(reason, "WRONG_VERSION_NUMBER") || !strcmp(reason, "HTTP_REQUEST") ||
             !strcmp(reason, "PACKET_LENGTH_TOO_LONG") || !strcmp(reason, "UNEXPECTED_EOF_WHILE_READING"))
        snprintf(why, whylen, "the other end does not speak TLS (%s)", reason);
    else if (!strcmp(reason, "TLSV1_ALERT_UNKNOWN_CA") || !strcmp(reason, "SSLV3_ALERT_BAD_CERTIFICATE") ||
             !strcmp(reason, "SSLV3_ALERT_CERTIFICATE_UNKNOWN"))
        snprintf(why, whylen, "the other end refused this end's certificate (%s: is it signed by the farm's CA?)",
                 reason);
    else if (kind == SSL_ERROR_SYSCALL || kind == SSL_ERROR_ZERO_RETURN)
        snprintf(why, whylen, "the connection broke during the TLS handshake");
    else snprintf(why, whylen, "%s", reason);
    return -1;
}

/* One lib.SSL_read_ex() or lib.SSL_write_ex(): bytes moved, 0 at a read's close_notify, -2 waiting (events), -1. */
static long transfer(TlsConn *c, void *data, size_t n, int writing, short *events) {
    if (!n) return 0;
    lib.ERR_clear_error();
    size_t moved = 0;
    int result = writing ? lib.SSL_write_ex((SSL *)c, data, n, &moved) : lib.SSL_read_ex((SSL *)c, data, n, &moved);
    if (result == 1) return (long)moved;
    int status = outcome((SSL *)c, result, events);
    lib.ERR_clear_error();
    return writing && status == 0 ? -1 : status;
}

long tls_read(TlsConn *c, void *data, size_t n, short *events) { return transfer(c, data, n, 0, events); }

long tls_write(TlsConn *c, const void *data, size_t n, short *events) {
    return transfer(c, (void *)data, n, 1, events);
}

void tls_free(TlsConn *c, int notify) {
    if (!c) return;
    if (notify) lib.SSL_shutdown((SSL *)c); /* a close_notify, not waiting for the other's */
    lib.SSL_free((SSL *)c);
    lib.ERR_clear_error();
}

#else /* built without TLS: options.c refuses the options, so none of these is called with TLS on */

int tls_built_in(void) { return 0; }
int tls_on(void) { return 0; }
int tls_load(const TlsOptions *t, int listens, int dials) {
    (void)t, (void)listens, (void)dials;
    log_msg(LOG_ERROR, "this farm-board was built without TLS");
    return -1;
}
void tls_unload(void) {}
TlsConn *tls_new(int fd, int server_side, const char *host) {
    (void)fd, (void)server_side, (void)host;
    return NULL;
}
int tls_handshake(TlsConn *c, short *events, char *why, size_t whylen) {
    (void)c, (void)events;
    snprintf(why, whylen, "built without TLS");
    return -1;
}
long tls_read(TlsConn *c, void *data, size_t n, short *events) {
    (void)c, (void)data, (void)n, (void)events;
    return -1;
}
long tls_write(TlsConn *c, const void *data, size_t n, short *events) {
    (void)c, (void)data, (void)n, (void)events;
    return -1;
}
void tls_free(TlsConn *c, int notify) { (void)c, (void)notify; }

#endif

/* --- the links the board dials (tracker.c, proxy.c): plain or TLS alike ----------------------------------- */

int tls_dialled(TlsConn **c, int fd, const char *host, short *events, char *why, size_t whylen) {
    if (!*c && !(*c = tls_new(fd, 0, host))) {
        snprintf(why, whylen, "cannot start TLS");
        return -1;
    }
    return tls_handshake(*c, events, why, whylen);
}

/* A TLS result as recv() and send() give theirs: -1 and errno while waiting (EAGAIN) or broken. */
static long as_socket_result(long result) {
    if (result == -2) errno = EAGAIN;
    else if (result == -1) errno = ECONNRESET;
    return result < 0 ? -1 : result;
}

long link_recv(TlsConn *c, int fd, void *data, size_t n) {
    short events = 0;
    return c ? as_socket_result(tls_read(c, data, n, &events)) : recv(fd, data, n, 0);
}

long link_send(TlsConn *c, int fd, const void *data, size_t n) {
    short events = 0;
    return c ? as_socket_result(tls_write(c, data, n, &events)) : send(fd, data, n, MSG_NOSIGNAL);
}

/* All of `data` on a blocking connection (whose send timeout bounds it): 0, or -1. */
int link_send_all(TlsConn *c, int fd, const void *data, size_t n) {
    const unsigned char *at = data;
    while (n) {
        long sent = link_send(c, fd, at, n);
        if (sent < 0 && errno == EINTR) continue;
        if (sent <= 0) return -1;
        at += sent, n -= (size_t)sent;
    }
    return 0;
}
