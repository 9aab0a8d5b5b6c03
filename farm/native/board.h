/* The native board daemon: declarations shared by its parts (see docs/native-board.md). */
#ifndef FARM_BOARD_H
#define FARM_BOARD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef FARM_VERSION
#define FARM_VERSION "0.0.0"
#endif

#define FORMAT(a, b) __attribute__((format(printf, a, b)))

/* --- util.c: logging, buffers, small helpers ---------------------------------------------- */

enum { LOG_DEBUG = 10, LOG_INFO = 20, LOG_WARNING = 30, LOG_ERROR = 40 };
extern int log_level;
void log_msg(int level, const char *fmt, ...) FORMAT(2, 3);

/* A growable byte buffer; a failed allocation sets `failed` and later additions do nothing. */
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} Buf;
void buf_add(Buf *b, const void *data, size_t n);
void buf_adds(Buf *b, const char *text);
void buf_addf(Buf *b, const char *fmt, ...) FORMAT(2, 3);
void buf_vaddf(Buf *b, const char *fmt, va_list args);
void buf_reset(Buf *b); /* empty, its memory kept: a buffer whose allocation failed takes bytes again */
void buf_free(Buf *b);
const char *buf_str(Buf *b); /* NUL-terminated contents ("" when empty) */

void *xmalloc(size_t n);   /* aborts on failure: for small bookkeeping only */
char *xstrdup(const char *s);
void release_free_memory(void); /* after start-up's transient allocations: an idle daemon keeps little resident */
/* Unmaps the resident pages of code (private read-only executable file mappings) before a process idles: each page
 * comes back, from the page cache, when next run, so the process keeps resident only the code it runs while idle
 * (start-up code and the neighbours the kernel maps around each fault are let go). Never for written mappings. */
void drop_code_pages(void);
/* Seconds a board stays idle after a session before its daemon and spawner drop their code pages: sessions one
 * after the other do not pay for it. */
#define IDLE_DROP_DELAY 1.0
double monotonic_now(void); /* seconds */
double wall_now(void);      /* seconds since the epoch */
int64_t monotonic_ns(void);
int valid_utf8(const unsigned char *s, size_t n);
uint16_t get_u16(const unsigned char *p);
uint32_t get_u32(const unsigned char *p);
uint64_t get_u64(const unsigned char *p);
void put_u32(unsigned char *p, uint32_t v);
void put_u64(unsigned char *p, uint64_t v);
int read_text_file(const char *path, char *out, size_t cap); /* bytes read (trailing space stripped), -1 */
int remove_tree(const char *path);                           /* rm -rf; 0 or -1 */
const char *signal_name(int number);
int dial(const char *host, int port, const char *what, char *why, size_t whylen); /* a connecting socket, or -1 */
/* Code points of UTF-8 text as Python's surrogateescape decodes it (a byte that is not UTF-8 counts as one), and
 * the bytes its first `chars` code points take. */
size_t utf8_chars(const char *text, size_t n);
size_t utf8_offset(const char *text, size_t n, size_t chars);
/* 'text' as Python's repr() shows a str, of at most `max_chars` code points; bytes that are not UTF-8 as \udcXX. */
void py_repr_limit(Buf *b, const char *text, size_t n, size_t max_chars);
#define py_repr(b, text, n) py_repr_limit(b, text, n, (size_t)-1)

/* --- json.c: a bounded JSON reader and a writer for exactly what the protocol carries ----- */

typedef enum { J_NULL, J_BOOL, J_INT, J_FLOAT, J_STRING, J_ARRAY, J_OBJECT } JType;
typedef struct JValue JValue;
typedef struct JMember JMember;
struct JValue {
    JType type;
    int big;       /* J_INT: the integer does not fit int64 (i is then meaningless) */
    int64_t i;     /* J_INT, J_BOOL */
    double f;      /* J_FLOAT */
    char *s;       /* J_STRING: decoded UTF-8, NUL-terminated, may hold NULs */
    size_t len;    /* J_STRING length; J_ARRAY/J_OBJECT count */
    JValue *items; /* J_ARRAY */
    JMember *members; /* J_OBJECT */
};
struct JMember {
    char *key;
    size_t key_len;
    JValue value;
};
#define JSON_MAX_DEPTH 128
typedef struct Arena Arena;
Arena *arena_new(void);
void arena_free(Arena *a);
/* Parse `len` bytes (surrounding whitespace allowed); NULL and a reason in `err` if they are not one JSON value. */
JValue *json_parse(const char *text, size_t len, Arena *arena, char *err, size_t errlen);
const JValue *json_get(const JValue *object, const char *key); /* the last member of that name, or NULL */
const char *json_type_name(const JValue *v);                  /* Python's name: int, str, list, dict ... */
void json_string(Buf *b, const char *s, size_t n);              /* a JSON string; invalid UTF-8 as \udcXX */
void json_double(Buf *b, double value);

/* --- sha256.c / proof.c: the farm-secret proof ------------------------------------------- */

typedef struct {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} Sha256;
void sha256_init(Sha256 *c);
void sha256_update(Sha256 *c, const void *data, size_t n);
void sha256_final(Sha256 *c, unsigned char out[32]);
void hmac_sha256(const unsigned char *key, size_t key_len, const unsigned char *const *parts, const size_t *lens,
                 size_t count, unsigned char out[32]);

#define AUTH_MAGIC 0x2F27A
#define NONCE_SIZE 32
#define MAC_SIZE 32
/* The acceptor's side: feed the connector's bytes; what to answer goes to `out`. */
typedef struct {
    int stage; /* 0: waiting for the connector's hello, 1: for its proof, 2: proven */
    unsigned char ours[NONCE_SIZE], theirs[NONCE_SIZE];
} Proof;
int proof_start(Proof *p);
void proof_clear(Proof *p); /* its nonces wiped */
/* Consume from data[0..n): returns bytes used, -1 when refused (a refusal to send may be in `out`). */
long proof_feed(Proof *p, const unsigned char *secret, size_t secret_len, const unsigned char *data, size_t n,
                Buf *out, char *why, size_t whylen);
int load_secret(const char *path, unsigned char *out, size_t *len); /* 0, or -1 logged */
/* The connector's side: its hello goes to `out`; then feed the acceptor's bytes (stage 2 once admitted). */
int proof_connector_start(Proof *p, Buf *out);
long proof_connector_feed(Proof *p, const unsigned char *secret, size_t secret_len, const unsigned char *data,
                          size_t n, Buf *out, char *why, size_t whylen);

/* --- handshake.c: TVM's hello and reply ----------------------------------------------------- */

#define RPC_MAGIC 0xFF271
#define CODE_SUCCESS 0xFF271
#define CODE_MISMATCH 0xFF273
#define CODE_BUSY 0xFF274
#define MAX_KEY_LENGTH 4096
typedef struct {
    char role[MAX_KEY_LENGTH + 1];
    char key[MAX_KEY_LENGTH + 1];
    double timeout; /* 0: none asked for */
} Hello;
/* From the hello's bytes: 1 and `used` once complete, 0 when more are needed, -1 (why) when malformed. */
int hello_parse(const unsigned char *data, size_t n, Hello *hello, size_t *used, char *why, size_t whylen);
int key_parse(const char *text, size_t n, Hello *hello, char *why, size_t whylen); /* `ROLE:KEY [-timeout=S]` */
void reply_encode(Buf *out, uint32_t code, const char *text);
void spoke(const unsigned char *data, size_t n, char *out, size_t cap);

/* --- confine.c: what a session runs as and may use ----------------------------------------- */

typedef struct {
    char name[256];
    uid_t uid;
    gid_t gid;
    int do_switch; /* the daemon is root: sessions become this user */
} SessionUser;
typedef struct {
    uint64_t open_files, processes, memory, quota; /* 0: no limit */
} SessionLimits;
int session_user(const char *name, SessionUser *user); /* 0, or -1 logged */
void warn_about_user(const SessionUser *user);
int enter_session(const SessionUser *user, const SessionLimits *limits, const char *directory);

/* --- options.c ------------------------------------------------------------------------------ */

typedef struct {
    const char *cert, *key, *ca, *server_name; /* --tls-*, else $REMOTEDEV_TLS_* (NULL: not given) */
} TlsOptions;
typedef struct {
    const char *host;
    int port, port_end;
    const char *key, *name, *work_dir, *secret_file;
    const char *tracker, *custom_addr; /* HOST:PORT of the tracker to register with; the address it gives clients */
    int through_proxy;                 /* dial out to the proxy at host:port instead of listening */
    const char *session_user_name;     /* --session-user (NULL: the default) */
    SessionUser user;                  /* resolved from it at start */
    SessionLimits limits;              /* of each session process */
    uint64_t max_message_size;
    uint64_t session_quota;      /* bytes, 0: none */
    uint64_t session_quota_files;
    double max_session_time;     /* 0: none */
    double handshake_timeout;
    int max_unproven, max_unproven_per_address;
    TlsOptions tls;
    int tls_enabled; /* a certificate, a key or a CA is named */
} Options;
int parse_options(int argc, char **argv, Options *o); /* 0, or the exit code */

/* --- tls.c: TLS on the board's connections (OpenSSL; built in with -DFARM_TLS) ---------------- */

typedef struct TlsConn TlsConn; /* an OpenSSL connection */
int tls_built_in(void);
int tls_on(void); /* tls_load() loaded something: every connection of the board uses TLS */
/* Loads what a daemon that listens and/or dials needs: 0, or -1 logged (the daemon exits with code 2). */
int tls_load(const TlsOptions *t, int listens, int dials);
void tls_unload(void);
TlsConn *tls_new(int fd, int server_side, const char *host); /* NULL on failure; the fd stays the caller's */
/* 1 once done, 0 while it waits for `events`, -1 failed (why). */
int tls_handshake(TlsConn *c, short *events, char *why, size_t whylen);
/* Bytes moved; 0 at the other end's close_notify (reads); -2 while waiting for `events`; -1 broken. */
long tls_read(TlsConn *c, void *data, size_t n, short *events);
long tls_write(TlsConn *c, const void *data, size_t n, short *events);
void tls_free(TlsConn *c, int notify); /* notify: send a close_notify first; the fd is not closed */
int tls_looks_like(const unsigned char *data, size_t n); /* could these bytes begin a TLS handshake */
/* A connection the board dialled: its TLS connection started (*c, the first time) and its handshake stepped. */
int tls_dialled(TlsConn **c, int fd, const char *host, short *events, char *why, size_t whylen);
/* recv() and send() on a connection, through its TLS connection where it has one (c: NULL without) */
long link_recv(TlsConn *c, int fd, void *data, size_t n);
long link_send(TlsConn *c, int fd, const void *data, size_t n);
int link_send_all(TlsConn *c, int fd, const void *data, size_t n); /* blocking: 0, or -1 */

/* dial.c: an outgoing link of the board (to its tracker or its proxy), TLS first, redialled after a backoff */
typedef struct {
    char host[256];
    int port;
    int fd; /* -1 while not dialled */
    TlsConn *tls; /* with TLS: the connection's */
    int connected, tls_done;
    short tls_wait; /* what its TLS handshake waits for */
    double retry_delay, next_attempt;
} Dial;
void dial_init(Dial *d, const char *host, int port);
int dial_start(Dial *d, const char *what, char *why, size_t whylen); /* a connect started: 0, or -1 (why) */
void dial_close(Dial *d);
void dial_hand_over(Dial *d); /* its connection (fd and TLS) is someone else's now: forgotten, not closed */
void dial_backoff(Dial *d); /* the next attempt after the delay, which doubles up to a cap */
void dial_reset_backoff(Dial *d);
short dial_events(const Dial *d, short ready); /* ready: what to wait for once connected and through TLS */
/* The connect finished and TLS stepped: 1 when the link is ready, 0 while not yet, -1 if it failed (why). */
int dial_progress(Dial *d, short revents, const char *what, char *why, size_t whylen);

/* relay.c: under TLS the daemon keeps the client's connection and relays plain bytes to the session process */
typedef struct {
    unsigned char *data;
    size_t start, end, cap;
} Queue;
typedef struct {
    TlsConn *tls;
    int outer, inner; /* the client's connection; the daemon's end of the socket pair */
    Queue to_child, to_client;
    uint64_t from_child; /* bytes the session process wrote, in all */
    int client_gone, child_done, inner_shut;
    short read_wait, write_wait; /* what the client's connection must be ready for to read, to write (TLS) */
} Relay;
int relay_start(Relay *r, TlsConn *tls, int outer, int *child_end); /* 0, or -1 (errno) */
void relay_pump(Relay *r);                                          /* moves what can move now */
short relay_outer_events(const Relay *r);
short relay_inner_events(const Relay *r);
void relay_drain_child(Relay *r);
/* Sends what is held for the client, then `last`, within `timeout` seconds; closes both connections. */
void relay_finish(Relay *r, const void *last, size_t n, double timeout);

/* --- framing.c: frames on a blocking connection ---------------------------------------------- */

#define FRAME_HEADER 20
#define MAX_META (1u << 20)
#define ATOMIC_REPLY 4096
enum {
    OP_PING = 1, OP_SYSTEM_INFO, OP_UPLOAD, OP_DOWNLOAD, OP_REMOVE, OP_LISTDIR, OP_LOAD_MODULE, OP_GET_FUNCTION,
    OP_CALL, OP_ARRAY_NEW, OP_ARRAY_EMPTY, OP_ARRAY_READ, OP_ARRAY_WRITE, OP_RUN, OP_CLOSE, OP_TIME, OP_PIPELINE,
    OP_PIPELINED_CALL,
    OP_RESULT = 64, OP_ERROR, OP_SESSION_END
};
typedef struct {
    int fd;
    unsigned char *buf; /* bytes received ahead of the next read */
    size_t start, end, cap;
    uint64_t sent; /* bytes sent on the connection, the handshake's reply included */
} Conn;
typedef struct {
    uint8_t op;
    uint32_t request_id;
    uint32_t meta_len;
    uint64_t size;
} Header;
void header_encode(unsigned char out[FRAME_HEADER], uint8_t op, uint32_t request_id, uint32_t meta_len,
                   uint64_t size);
int header_decode(const unsigned char in[FRAME_HEADER], Header *h, uint64_t max_payload, char *why, size_t whylen);
int conn_read(Conn *c, void *dst, size_t n); /* 0 when all n arrived, -1 at end of stream or error */
int conn_send(Conn *c, const void *a, size_t alen, const void *b, size_t blen);
int send_frame(int fd, uint8_t op, uint32_t request_id, const char *meta, size_t meta_len, const void *payload,
               uint64_t size);

/* --- status: what the session process is doing, shared with the daemon ---------------------- */

enum { ST_IDLE, ST_RUNNING, ST_SENDING, ST_FINISHED };
#define STATUS_SIZE 4096
#define STATUS_TEXT 18
void status_set(unsigned char *status, int state);
void status_running(unsigned char *status, const char *activity);
void status_sending(unsigned char *status, uint64_t reply_end);
void status_activity(const unsigned char *status, char *out, size_t cap);

/* --- session.c and its parts --------------------------------------------------------------- */

typedef struct Session Session;
typedef struct {
    const char *directory;
    const char *key, *name;
    uint64_t max_message_size, quota;
    unsigned char *status;
    const unsigned char *leftover;
    size_t leftover_len;
    uint64_t bytes_sent;
} SessionOrder;
int session_serve(int fd, const SessionOrder *order); /* the session process's exit code */

/* A request's reply: metadata (JSON text, empty for none) and a payload the handler owns. */
typedef struct {
    Buf meta;
    const void *payload;
    uint64_t size;
    void *mapped; /* munmap(mapped, size) after sending */
    Buf owned;    /* or the payload lives here */
} Reply;

/* The session's error: set by fail(), answered as an ERROR frame. */
int fail(Session *s, const char *type, const char *fmt, ...) FORMAT(3, 4);
int fail_errno(Session *s, int err, const char *path);
int field_str(Session *s, const JValue *meta, const char *name, const char *fallback, const char **out,
              size_t *len);
int field_int(Session *s, const JValue *meta, const char *name, int64_t *out, int *big);

/* Objects of a session: one id counter for modules, functions and arrays. */
typedef enum { OBJ_NONE, OBJ_MODULE, OBJ_FUNCTION, OBJ_ARRAY } ObjKind;
typedef struct {
    ObjKind kind;
    void *p;
} Obj;
typedef struct {
    char *path;
    dev_t dev;
    ino_t ino;
    int64_t mtime_ns;
    off_t size;
} Loaded;
struct Session {
    Conn conn;
    const SessionOrder *order;
    char *root;     /* the session directory, links resolved */
    char err_type[64];
    Buf err_message;
    Obj *objects;   /* by id; ids count from 1 */
    size_t objects_cap;
    uint64_t next_id;
    size_t live_arrays;
    Loaded *loaded; /* what LOAD_MODULE loaded, by path, to notice a file that changed */
    size_t loaded_count;
    char pipeline_failed[600]; /* what failed in the current pipeline: its later calls are not run ("": none) */
};
typedef struct {
    void *data;
    uint64_t nbytes;
    int mapped; /* its own anonymous mapping */
    int dtype;
    void *block; /* what to free when not mapped */
} Array;
void *session_object(Session *s, uint64_t id, ObjKind kind);
/* A request's parts decoded once received (session.c), ProtocolError when malformed. */
int meta_decode(Session *s, const char *text, size_t n, Arena *arena, const JValue **meta);
int release_field(Session *s, const JValue *meta);
uint64_t session_add(Session *s, ObjKind kind, void *object);

/* files.c */
typedef struct {
    char *path;     /* the temporary file the payload goes into (NULL: refused, or nothing yet) */
    void *map;      /* its writable mapping (NULL for an empty file) */
    uint64_t size;
    char refusal[512]; /* why the upload is refused (QuotaError); its payload is read and dropped */
} Upload;
int resolve(Session *s, const JValue *name, int follow, char **out);
int upload_begin(Session *s, const JValue *meta, uint64_t nbytes, Upload *u, char *why, size_t whylen);
void upload_abort(Upload *u);
int op_upload(Session *s, const JValue *meta, Upload *u, Reply *r);
int op_download(Session *s, const JValue *meta, Reply *r);
int op_remove(Session *s, const JValue *meta, Reply *r);
int op_listdir(Session *s, const JValue *meta, Reply *r);

/* arrays.c */
#define DTYPE_COUNT 12
extern const char *const DTYPE_NAMES[DTYPE_COUNT];
extern const int DTYPE_SIZES[DTYPE_COUNT];
int dtype_index(const char *name);
int array_alloc(uint64_t nbytes, Array *a); /* zero-filled aligned storage; 0 or -1 */
void array_release(Array *a);
int array_spec(Session *s, const JValue *meta, int *dtype, uint64_t *nbytes);
int op_array_new(Session *s, const JValue *meta, Array *received, Reply *r);
int op_array_empty(Session *s, const JValue *meta, Reply *r);
int op_array_read(Session *s, const JValue *meta, Reply *r);
int op_array_write(Session *s, const JValue *meta, const void *payload, uint64_t size, Reply *r);
Array *array_for_write(Session *s, const JValue *meta, uint64_t nbytes);
void release_arrays(Session *s, const JValue *ids);

/* calls.c */
int op_load_module(Session *s, const JValue *meta, Reply *r);
int op_get_function(Session *s, const JValue *meta, Reply *r);
int op_call(Session *s, const unsigned char *payload, uint64_t size, Reply *r);
int op_pipelined_call(Session *s, uint32_t request_id, const unsigned char *payload, uint64_t size, Reply *r);
void function_free(void *function); /* what it holds, not itself */
void module_free(void *module);
int op_time(Session *s, const JValue *meta, const unsigned char *payload, uint64_t size, Reply *r);

/* sysinfo.c */
int op_system_info(Session *s, Reply *r);
void machine_state(Buf *b, int cpu, long others_override); /* others_override < -1: read it now */
int current_cpu(void);
long others_running(void); /* -1 when unknown */
const char *machine_name(void);
const char *elf_machine(const char *path, char *out, size_t cap); /* NULL if not ELF */

/* tracker.c: the board's registration with a tracker */
typedef struct {
    Dial link;
    int board_port;
    const char *key, *custom_addr, *name;
    const unsigned char *secret;
    size_t secret_len;
    int opened, in_session;
    Proof proof;
    Buf out, in;
    char expected[64]; /* what each outstanding request was: u(pdate_info), p(ut), g(et pending match keys) */
    int expected_count;
    double next_poll, handed_out_since;
    char matchkey[MAX_KEY_LENGTH + 64]; /* what a client must present now; empty while in a session */
} Tracker;
void tracker_init(Tracker *t, const char *address, const char *key, const char *custom_addr, const char *name,
                  int port, const unsigned char *secret, size_t secret_len);
short tracker_events(const Tracker *t);
void tracker_on_event(Tracker *t, short revents);
void tracker_tick(Tracker *t, double now);
double tracker_next_deadline(const Tracker *t); /* 0: none */
void tracker_session_started(Tracker *t);
void tracker_session_ended(Tracker *t);
int tracker_accepts(const Tracker *t, const char *client_key);
void tracker_close(Tracker *t);
void tracker_replies(Tracker *t); /* takes the complete replies out of t->in (no socket I/O) */

/* proxy.c: a board behind a proxy */
typedef struct {
    Dial link;
    const char *key;
    const unsigned char *secret;
    size_t secret_len;
    int greeted, in_session;
    Proof proof;
    Buf in;
    uint64_t sent; /* bytes sent on this connection: the session counts on from there */
} Proxy;
/* A client the proxy paired with the board: the connection, its key text and what came after the reply. */
typedef struct {
    int fd;
    TlsConn *tls; /* with TLS: the connection's */
    char client[MAX_KEY_LENGTH + 1];
    unsigned char *leftover;
    size_t leftover_len;
    uint64_t sent;
} Paired;
void proxy_init(Proxy *p, const char *host, int port, const char *key, const unsigned char *secret,
                size_t secret_len);
short proxy_events(const Proxy *p);
int proxy_on_event(Proxy *p, short revents, Paired *paired); /* 1 once a client is paired */
void proxy_tick(Proxy *p, double now);
double proxy_next_deadline(const Proxy *p); /* 0: none */
void proxy_session_ended(Proxy *p);
void proxy_close(Proxy *p);
int proxy_reply(Proxy *p, char *client, size_t cap, size_t *used); /* reads p->in (no socket I/O) */

/* cgroup.c: a cgroup per session (farm/board/confine.py) */
enum { CONTROL_MEMORY = 1, CONTROL_PIDS = 2 };
#define MAX_HIERARCHIES 4
#define CGROUP_PATH 4096
typedef struct {
    int version;            /* 1 or 2 */
    char base[CGROUP_PATH]; /* the daemon's own cgroup in this hierarchy */
    char path[CGROUP_PATH]; /* the farm's cgroup: base/farm-board-PID */
    int controls;           /* CONTROL_*: the limits set in this hierarchy */
    int leaf;               /* the daemon moved into path/daemon (cgroup v2 with controllers) */
} Hierarchy;
typedef struct {
    Hierarchy hierarchies[MAX_HIERARCHIES];
    int count; /* 0: no cgroup; sessions get resource limits only */
    unsigned sessions;
    SessionLimits limits;
} Confinement;
void confinement_create(Confinement *c, const SessionLimits *limits); /* logs which mechanism holds */
void confinement_destroy(const Confinement *c);
int cgroup_session(Confinement *c, char *name, size_t cap); /* a new session's cgroup: 0, or -1 (errno) */
int cgroup_enter(const Confinement *c, const char *name);   /* moves the calling process in: 0, or -1 logged */
int cgroup_controls(const Confinement *c, int control);
void cgroup_kill(const Confinement *c, const char *name);
int cgroup_remove(const Confinement *c, const char *name); /* kill, wait until empty, remove: 0, or -1 logged */
uint64_t cgroup_oom_kills(const Confinement *c, const char *name);
uint64_t cgroup_refused_forks(const Confinement *c, const char *name);

/* spawner.c: the process that forks the sessions, started before the secret is read */
typedef struct {
    pid_t pid;
    int fd; /* the daemon's end of the socket pair */
} Spawner;
enum { REPORT_GONE = 0, REPORT_STARTED = 'P', REPORT_ENDED = 'E', REPORT_FAILED = 'F' };
int spawner_start(Spawner *sp, const Options *o, const Confinement *confinement, unsigned char *status);
int spawner_order(Spawner *sp, int fd, const SessionOrder *order, const char *cgroup); /* 0, or -1 (errno) */
int spawner_kill(Spawner *sp);
int spawner_work_dir(Spawner *sp, const char *path); /* removed by the spawner when the daemon is gone */
int spawner_standby(Spawner *sp, const char *cgroup); /* fork the next session's process now, in `cgroup` ("": none) */
/* The next report (REPORT_*, -1 for an unknown one); `pid`, `wait_status`, and for a failure its text. */
int spawner_report(Spawner *sp, int *pid, int *wait_status, char *text, size_t cap);
void spawner_stop(Spawner *sp); /* closes the daemon's end (the spawner then exits) and reaps it */

/* daemon.c */
int serve_board(const Options *o, const unsigned char *secret, size_t secret_len, Spawner *spawner,
                Confinement *confinement, unsigned char *status);

#endif
