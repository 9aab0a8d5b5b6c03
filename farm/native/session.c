/* One client's session, in its own process: reads requests, answers each with RESULT or ERROR (docs/protocol.md §3-5),
 * as farm/board/session.py does. */
#define _GNU_SOURCE
#include "board.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Longest error message sent back, in bytes; the middle of a longer one is cut. */
#define MAX_ERROR_TEXT (32 << 10)
/* Bytes read ahead at once: a small request comes in one read, header, metadata and payload. */
#define READ_AHEAD (64u << 10)
/* A payload the session does not place itself goes into an anonymous mapping from this size up. */
#define LAZY_PAYLOAD (1u << 20)

static const char *const OP_NAMES[] = {"",       "PING",        "SYSTEM_INFO", "UPLOAD",     "DOWNLOAD", "REMOVE",
                                       "LISTDIR", "LOAD_MODULE", "GET_FUNCTION", "CALL",     "ARRAY_NEW",
                                       "ARRAY_EMPTY", "ARRAY_READ", "ARRAY_WRITE", "RUN",    "CLOSE",    "TIME",
                                       "PIPELINE", "PIPELINED_CALL"};

int fail(Session *s, const char *type, const char *fmt, ...) {
    snprintf(s->err_type, sizeof s->err_type, "%s", type);
    s->err_message.len = 0;
    s->err_message.failed = 0;
    va_list args;
    va_start(args, fmt);
    buf_vaddf(&s->err_message, fmt, args);
    va_end(args);
    return -1;
}

/* An OSError as Python words it: "[Errno 2] No such file or directory: 'PATH'", of the matching subclass. */
int fail_errno(Session *s, int err, const char *path) {
    const char *type = "OSError";
    switch (err) {
    case ENOENT: type = "FileNotFoundError"; break;
    case EEXIST: type = "FileExistsError"; break;
    case EISDIR: type = "IsADirectoryError"; break;
    case ENOTDIR: type = "NotADirectoryError"; break;
    case EACCES:
    case EPERM: type = "PermissionError"; break;
    case ENOMEM: type = "MemoryError"; break;
    }
    Buf quoted = {0};
    py_repr(&quoted, path, strlen(path));
    fail(s, type, "[Errno %d] %s: %s", err, strerror(err), buf_str(&quoted));
    buf_free(&quoted);
    return -1;
}

static int field(Session *s, const JValue *meta, const char *name, JType type, const JValue **out) {
    const JValue *v = json_get(meta, name);
    *out = v;
    if (!v) return 1;
    if (v->type != type) return fail(s, "ProtocolError", "request field '%s' has type %s", name, json_type_name(v));
    return 0;
}

int field_str(Session *s, const JValue *meta, const char *name, const char *fallback, const char **out, size_t *len) {
    const JValue *v;
    int found = field(s, meta, name, J_STRING, &v);
    if (found < 0) return -1;
    if (found == 1) {
        if (!fallback) return fail(s, "ProtocolError", "request is missing the field '%s'", name);
        *out = fallback;
        if (len) *len = strlen(fallback);
        return 0;
    }
    *out = v->s;
    if (len) *len = v->len;
    return 0;
}

int field_int(Session *s, const JValue *meta, const char *name, int64_t *out, int *big) {
    const JValue *v;
    int found = field(s, meta, name, J_INT, &v);
    if (found < 0) return -1;
    if (found == 1) return fail(s, "ProtocolError", "request is missing the field '%s'", name);
    *out = v->i;
    *big = v->big;
    return 0;
}

void *session_object(Session *s, uint64_t id, ObjKind kind) {
    if (id == 0 || id >= s->objects_cap || s->objects[id].kind != kind) return NULL;
    return s->objects[id].p;
}

uint64_t session_add(Session *s, ObjKind kind, void *object) {
    uint64_t id = s->next_id++;
    if (id >= s->objects_cap) {
        size_t cap = s->objects_cap ? s->objects_cap * 2 : 64;
        Obj *grown = realloc(s->objects, cap * sizeof(Obj));
        if (!grown) {
            log_msg(LOG_ERROR, "out of memory for the session's objects");
            abort();
        }
        memset(grown + s->objects_cap, 0, (cap - s->objects_cap) * sizeof(Obj));
        s->objects = grown;
        s->objects_cap = cap;
    }
    s->objects[id] = (Obj){kind, object};
    if (kind == OBJ_ARRAY) s->live_arrays++;
    return id;
}

void release_arrays(Session *s, const JValue *ids) {
    for (size_t k = 0; k < ids->len; k++) {
        const JValue *id = &ids->items[k];
        Array *a = id->big || id->i < 0 ? NULL : session_object(s, (uint64_t)id->i, OBJ_ARRAY);
        if (!a) continue;
        array_release(a);
        free(a);
        s->objects[id->i] = (Obj){OBJ_NONE, NULL};
        s->live_arrays--;
    }
}

/* A request's metadata, its `n` bytes of JSON text received: the object in `meta`, or -1 with the ProtocolError. */
int meta_decode(Session *s, const char *text, size_t n, Arena *arena, const JValue **meta) {
    char why[300];
    if (!valid_utf8((const unsigned char *)text, n))
        return fail(s, "ProtocolError", "frame metadata is not valid JSON: it is not UTF-8");
    const JValue *parsed = json_parse(text, n, arena, why, sizeof why);
    if (!parsed) return fail(s, "ProtocolError", "frame metadata is not valid JSON: %s", why);
    if (parsed->type != J_OBJECT)
        return fail(s, "ProtocolError", "frame metadata is a JSON %s, not an object", json_type_name(parsed));
    *meta = parsed;
    return 0;
}

/* The arrays a request's 'release' field names are freed before it runs: 0, or -1 with the ProtocolError. */
int release_field(Session *s, const JValue *meta) {
    const JValue *release = json_get(meta, "release");
    if (!release) return 0;
    int ok = release->type == J_ARRAY;
    for (size_t k = 0; ok && k < release->len; k++) ok = release->items[k].type == J_INT;
    if (!ok) return fail(s, "ProtocolError", "request field 'release' is not a list of array ids");
    release_arrays(s, release);
    return 0;
}

static void reply_free(Reply *r) {
    buf_free(&r->meta);
    buf_free(&r->owned);
    if (r->mapped) munmap(r->mapped, (size_t)r->size);
    memset(r, 0, sizeof *r);
}

/* One frame: header and metadata in one buffer, a small payload joined to it, a large one sent from where it lies.
 * Before a reply that does not fit an empty socket buffer, the status block records where it ends. */
static int send_reply(Session *s, uint8_t op, uint32_t request_id, const Buf *meta, const void *payload,
                      uint64_t size) {
    Buf out = {0};
    unsigned char head[FRAME_HEADER];
    header_encode(head, op, request_id, (uint32_t)meta->len, size);
    buf_add(&out, head, FRAME_HEADER);
    buf_add(&out, meta->data, meta->len);
    int inline_payload = size <= ATOMIC_REPLY;
    if (inline_payload) buf_add(&out, payload, (size_t)size);
    if (out.failed) {
        buf_free(&out);
        return -1;
    }
    uint64_t total = FRAME_HEADER + meta->len + size;
    if (total > ATOMIC_REPLY) status_sending(s->order->status, s->conn.sent + total);
    int status = conn_send(&s->conn, out.data, out.len, inline_payload ? NULL : payload,
                           inline_payload ? 0 : (size_t)size);
    status_set(s->order->status, ST_IDLE);
    buf_free(&out);
    return status;
}

/* At most MAX_ERROR_TEXT characters (code points, as the Python board counts them) of an error's text. */
static void clipped(Buf *meta, const char *text, size_t n) {
    size_t chars = n <= MAX_ERROR_TEXT ? n : utf8_chars(text, n);
    if (chars <= MAX_ERROR_TEXT) {
        json_string(meta, text, n);
        return;
    }
    Buf cut = {0};
    size_t half = MAX_ERROR_TEXT / 2;
    size_t head = utf8_offset(text, n, half), tail = utf8_offset(text, n, chars - half);
    buf_add(&cut, text, head);
    buf_addf(&cut, "\n[... %zu characters cut ...]\n", chars - 2 * half);
    buf_add(&cut, text + tail, n - tail);
    json_string(meta, cut.data, cut.len);
    buf_free(&cut);
}

static int send_error(Session *s, uint32_t request_id) {
    Buf meta = {0};
    buf_adds(&meta, "{\"type\":");
    json_string(&meta, s->err_type, strlen(s->err_type));
    buf_adds(&meta, ",\"message\":");
    clipped(&meta, buf_str(&s->err_message), s->err_message.failed ? 0 : s->err_message.len);
    buf_adds(&meta, ",\"traceback\":\"\"}");
    int status = send_reply(s, OP_ERROR, request_id, &meta, NULL, 0);
    if (status) log_msg(LOG_INFO, "could not send an error to the client");
    buf_free(&meta);
    return status;
}

static int is_protocol_error(Session *s) { return strcmp(s->err_type, "ProtocolError") == 0; }

/* Reads and drops `size` payload bytes (a refused upload's). */
static int drop_payload(Session *s, uint64_t size) {
    unsigned char scratch[65536];
    while (size) {
        size_t take = size < sizeof scratch ? (size_t)size : sizeof scratch;
        if (conn_read(&s->conn, scratch, take)) return -1;
        size -= take;
    }
    return 0;
}

/* The request's payload and where it landed. */
typedef struct {
    void *data;
    uint64_t size;
    int mapped;      /* an anonymous mapping of ours */
    int owned;       /* malloc'd here */
    Array *array;    /* ARRAY_NEW: the new array's storage */
    int in_place;    /* ARRAY_WRITE: received straight into the array */
    Upload upload;   /* UPLOAD: a temporary file in the session directory */
} Payload;

static void payload_free(Payload *p) {
    if (p->mapped) munmap(p->data, (size_t)p->size);
    else if (p->owned) free(p->data);
    if (p->array) {
        array_release(p->array);
        free(p->array);
    }
    upload_abort(&p->upload);
    memset(p, 0, sizeof *p);
}

/* Places and receives the payload: -1 with the error set (answered), -2 when the client left. */
static int receive_payload(Session *s, const Header *h, const JValue *meta, Payload *p) {
    p->size = h->size;
    if (h->size > SIZE_MAX / 2)
        return fail(s, "ProtocolError", "no memory for a payload of %llu bytes", (unsigned long long)h->size);
    char why[300] = "";
    if (h->op == OP_UPLOAD) {
        if (upload_begin(s, meta, h->size, &p->upload, why, sizeof why))
            return fail(s, "ProtocolError", "the board cannot allocate %llu bytes for a payload: %s",
                        (unsigned long long)h->size, why);
        if (p->upload.refusal[0]) return drop_payload(s, h->size) ? -2 : 0;
        p->data = p->upload.map;
    } else if (h->op == OP_ARRAY_NEW && h->size) {
        p->array = malloc(sizeof(Array));
        if (!p->array || array_alloc(h->size, p->array)) {
            free(p->array);
            p->array = NULL;
            return fail(s, "ProtocolError", "the board cannot allocate %llu bytes for a payload: out of memory",
                        (unsigned long long)h->size);
        }
        p->data = p->array->data;
    } else if (h->op == OP_ARRAY_WRITE && array_for_write(s, meta, h->size)) {
        p->data = array_for_write(s, meta, h->size)->data;
        p->in_place = 1;
    } else if (h->size >= LAZY_PAYLOAD) {
        p->data = mmap(NULL, (size_t)h->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p->data == MAP_FAILED) {
            p->data = NULL;
            return fail(s, "ProtocolError", "no memory for a payload of %llu bytes", (unsigned long long)h->size);
        }
        p->mapped = 1;
    } else if (h->size) {
        p->data = malloc((size_t)h->size);
        p->owned = 1;
        if (!p->data)
            return fail(s, "ProtocolError", "no memory for a payload of %llu bytes", (unsigned long long)h->size);
    }
    if (h->size && conn_read(&s->conn, p->data, (size_t)h->size)) return -2;
    return 0;
}

static int op_run(Session *s, const JValue *meta) {
    const char *encoding;
    if (field_str(s, meta, "result", "", &encoding, NULL)) return -1;
    return fail(s, "FarmError",
                "this board has no Python: it runs the native board server, which offers files, modules, arrays, "
                "calls and time_evaluator but not run(); use a board that runs python -m farm.server for run()");
}

static int dispatch(Session *s, const Header *h, const JValue *meta, Payload *p, Reply *r) {
    switch (h->op) {
    case OP_PING: return 0;
    case OP_SYSTEM_INFO: return op_system_info(s, r);
    case OP_UPLOAD: return op_upload(s, meta, &p->upload, r);
    case OP_DOWNLOAD: return op_download(s, meta, r);
    case OP_REMOVE: return op_remove(s, meta, r);
    case OP_LISTDIR: return op_listdir(s, meta, r);
    case OP_LOAD_MODULE: return op_load_module(s, meta, r);
    case OP_GET_FUNCTION: return op_get_function(s, meta, r);
    case OP_CALL: return op_call(s, p->data, p->size, r);
    case OP_ARRAY_NEW: {
        int status = op_array_new(s, meta, p->array, r);
        if (status == 0) p->array = NULL; /* the session holds it now */
        return status;
    }
    case OP_ARRAY_EMPTY: return op_array_empty(s, meta, r);
    case OP_ARRAY_READ: return op_array_read(s, meta, r);
    case OP_ARRAY_WRITE: return p->in_place ? op_array_write(s, meta, NULL, p->size, r)
                                            : op_array_write(s, meta, p->data, p->size, r);
    case OP_RUN: return op_run(s, meta);
    case OP_TIME: return op_time(s, meta, p->data, p->size, r);
    case OP_PIPELINE: s->pipeline_failed[0] = 0; return 0;
    case OP_PIPELINED_CALL: return op_pipelined_call(s, h->request_id, p->data, p->size, r);
    default: return fail(s, "ProtocolError", "unknown operation %d", h->op);
    }
}

/* Answers one request; 0 when the session must end. */
static int handle(Session *s, const Header *h, const JValue *meta, Payload *p) {
    if (h->op == OP_CLOSE) {
        Buf none = {0};
        send_reply(s, OP_RESULT, h->request_id, &none, NULL, 0);
        return 0;
    }
    Reply r = {0};
    int status = 0;
    /* the calls, RUN and TIME record what they run themselves; PING runs nothing worth naming */
    if (h->op >= OP_PING && h->op <= OP_PIPELINED_CALL && h->op != OP_CALL && h->op != OP_RUN && h->op != OP_PING &&
        h->op != OP_TIME && h->op != OP_PIPELINED_CALL) {
        const JValue *name = json_get(meta, "name");
        char activity[300];
        snprintf(activity, sizeof activity, "handling %s %.200s", OP_NAMES[h->op],
                 name && name->type == J_STRING ? name->s : "");
        status_running(s->order->status, activity);
    }
    status = release_field(s, meta);
    if (status == 0) status = dispatch(s, h, meta, p, &r);
    status_set(s->order->status, ST_IDLE);
    int go_on = 1;
    if (status) {
        go_on = !is_protocol_error(s);
        if (!go_on) log_msg(LOG_WARNING, "closing session: %s", buf_str(&s->err_message));
        send_error(s, h->request_id);
    } else if (send_reply(s, OP_RESULT, h->request_id, &r.meta, r.owned.len ? r.owned.data : r.payload,
                          r.owned.len ? r.owned.len : r.size)) {
        log_msg(LOG_INFO, "the client left while a reply was sent");
        go_on = 0;
    }
    reply_free(&r);
    return go_on;
}

/* Reads one request and answers it; 0 when the session must end. */
static int serve_one(Session *s) {
    unsigned char head[FRAME_HEADER];
    if (conn_read(&s->conn, head, FRAME_HEADER)) {
        log_msg(LOG_INFO, "the client left");
        return 0;
    }
    Header h;
    char why[300];
    if (header_decode(head, &h, s->order->max_message_size, why, sizeof why)) {
        fail(s, "ProtocolError", "%s", why);
        log_msg(LOG_WARNING, "closing session: %s", why);
        send_error(s, h.request_id);
        return 0;
    }
    Arena *arena = NULL; /* for the metadata: a request without any (a call) needs none */
    char *text = NULL;
    JValue empty = {.type = J_OBJECT};
    const JValue *meta = &empty;
    Payload p = {0};
    int go_on = 0, status = 0;
    if (h.meta_len) {
        text = malloc(h.meta_len);
        if (!text) {
            status = fail(s, "ProtocolError", "no memory for metadata of %u bytes", h.meta_len);
        } else if (conn_read(&s->conn, text, h.meta_len)) {
            log_msg(LOG_INFO, "the client left");
            goto done;
        } else {
            arena = arena_new();
            status = meta_decode(s, text, h.meta_len, arena, &meta);
        }
    }
    if (status == 0) {
        status = receive_payload(s, &h, meta, &p);
        if (status == -2) {
            log_msg(LOG_INFO, "the client left");
            goto done;
        }
    }
    if (status) {
        log_msg(LOG_WARNING, "closing session: %s", buf_str(&s->err_message));
        send_error(s, h.request_id);
        goto done;
    }
    go_on = handle(s, &h, meta, &p);
done:
    payload_free(&p);
    free(text);
    arena_free(arena);
    return go_on;
}

/* Frees what the session holds (its libraries stay loaded: their code may still be running in threads). */
static void session_free(Session *s) {
    for (size_t id = 1; id < s->objects_cap; id++) {
        Obj *o = &s->objects[id];
        if (o->kind == OBJ_ARRAY) array_release(o->p);
        else if (o->kind == OBJ_FUNCTION) function_free(o->p);
        else if (o->kind == OBJ_MODULE) module_free(o->p);
        else continue;
        free(o->p);
    }
    free(s->objects);
    for (size_t k = 0; k < s->loaded_count; k++) free(s->loaded[k].path);
    free(s->loaded);
    free(s->conn.buf);
    free(s->root);
    buf_free(&s->err_message);
}

int session_serve(int fd, const SessionOrder *order) {
    Session s = {.order = order, .next_id = 1};
    s.conn.fd = fd;
    s.conn.sent = order->bytes_sent;
    s.conn.cap = order->leftover_len > READ_AHEAD ? order->leftover_len : READ_AHEAD;
    s.conn.buf = xmalloc(s.conn.cap);
    memcpy(s.conn.buf, order->leftover, order->leftover_len);
    s.conn.end = order->leftover_len;
    s.root = realpath(order->directory, NULL);
    if (!s.root || chdir(s.root)) {
        log_msg(LOG_ERROR, "cannot enter the session directory %s: %s", order->directory, strerror(errno));
        return 1;
    }
    while (serve_one(&s)) {
    }
    session_free(&s);
    status_set(order->status, ST_FINISHED);
    return 0;
}
