/* The compiled call path of the client (farm.client._callpath): a call of a native function on a board, from
 * its Python arguments to its Python result, in one C function.
 *
 * A CallPath belongs to one function of one session. Its call(request_id, args) checks the arguments against
 * the function's plan (its signature, or the usual argument types when it has none), writes the CALL frame
 * (the one farm.protocol.calls.CallFrame writes), sends it and receives the reply with the GIL released, and
 * returns the value of a plain RESULT. Anything else goes back to Python, which keeps every rule:
 *   - arguments the plan does not cover (another type, an out-of-range integer, an array of another session):
 *     `bail`, before anything is sent, for the general path to encode or to refuse with its message;
 *   - a reply that is not the call's plain RESULT (an error, a notice, a short read, a closed connection):
 *     `not_a_result`, with the bytes received kept for received_bytes();
 *   - a failed send or receive: OSError, with `sent` telling which.
 * Integers travel little-endian, as the protocol says, whatever the host's byte order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

enum {
    HEADER_SIZE = 20,       /* magic, version, op; request id u32; metadata length u32; payload length u64 */
    PREFIX_SIZE = 6,        /* function id u32, argument count u16 */
    MAX_ARGS = 256,         /* farm.protocol.calls.MAX_ARGS */
    RESULT_FRAME_SIZE = 29, /* a RESULT frame without metadata: the header, a tag and an 8-byte value */
    RESULT_PAYLOAD = 9,
};

/* The frame header's first word: the magic "RD", version 1 and the op (farm.protocol.framing, ops). */
static const uint32_t MAGIC_WORD = 0x52u | 0x44u << 8 | 1u << 16;
static const uint32_t OP_CALL = 9;
static const uint32_t OP_RESULT = 64;

/* What one parameter accepts. ANY (a function without a signature) takes what the usual call passes: an
 * array of the session, an int, a float or None. */
enum kind { ANY, POINTER, INTEGER, FLOAT };

struct param {
    enum kind kind;
    PyObject *dtype;   /* POINTER: the dtype name arrays must have, or NULL for any */
    long long low;     /* INTEGER: the inclusive range the value must be in */
    long long high;
};

typedef struct {
    PyObject_HEAD
    PyObject *sock; /* the session's socket: its descriptor is read at each call, -1 once it is closed */
    PyObject *session;
    PyObject *array_type;
    PyObject *bail;
    PyObject *not_a_result;
    int returns_bool;
    Py_ssize_t count; /* the number of parameters, -1 without a signature */
    struct param *params;
    int sent;
    Py_ssize_t received;
    unsigned char reply[RESULT_FRAME_SIZE];
    unsigned char frame[HEADER_SIZE + PREFIX_SIZE + MAX_ARGS * 9];
} CallPath;

static PyObject *session_name, *id_name, *dtype_name_name;

static void put_u16(unsigned char *at, uint32_t value)
{
    at[0] = (unsigned char)value;
    at[1] = (unsigned char)(value >> 8);
}

static void put_u32(unsigned char *at, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        at[i] = (unsigned char)(value >> (8 * i));
}

static void put_u64(unsigned char *at, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        at[i] = (unsigned char)(value >> (8 * i));
}

static uint64_t get_u64(const unsigned char *at)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = value << 8 | at[i];
    return value;
}

static uint32_t get_u32(const unsigned char *at)
{
    return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

/* Py_NewRef, which Python 3.8 and 3.9 lack. */
static PyObject *new_ref(PyObject *object)
{
    Py_INCREF(object);
    return object;
}

/* -- arguments -------------------------------------------------------------------------------------------- */

/* The outcome of reading one argument: its tag and 8-byte value, the general path's turn, or a Python error. */
enum reading { READ, BAIL, FAILED };

static enum reading read_array(CallPath *self, PyObject *arg, PyObject *dtype, uint64_t *value)
{
    PyObject *session = PyObject_GetAttr(arg, session_name);
    if (session == NULL)
        return FAILED;
    Py_DECREF(session); /* compared by identity only; the array keeps it alive */
    if (session != self->session)
        return BAIL;
    if (dtype != NULL) {
        PyObject *name = PyObject_GetAttr(arg, dtype_name_name);
        if (name == NULL)
            return FAILED;
        int same = PyUnicode_Check(name) ? PyUnicode_Compare(name, dtype) : 1;
        Py_DECREF(name);
        if (same == -1 && PyErr_Occurred())
            return FAILED;
        if (same != 0)
            return BAIL;
    }
    PyObject *id = PyObject_GetAttr(arg, id_name);
    if (id == NULL)
        return FAILED;
    if (!PyLong_CheckExact(id)) {
        Py_DECREF(id);
        return BAIL;
    }
    *value = PyLong_AsUnsignedLongLong(id);
    Py_DECREF(id);
    if (*value == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return BAIL;
    }
    return READ;
}

/* An int (not a subclass but bool) that fits int64_t and [low, high]. */
static enum reading read_integer(PyObject *arg, long long low, long long high, uint64_t *value)
{
    if (!PyLong_CheckExact(arg) && !PyBool_Check(arg))
        return BAIL;
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (overflow || number < low || number > high)
        return BAIL;
    *value = (uint64_t)number;
    return READ;
}

static enum reading read_float(PyObject *arg, uint64_t *value)
{
    double number = PyFloat_AS_DOUBLE(arg);
    memcpy(value, &number, sizeof number);
    return READ;
}

/* The tag and value of argument `arg` for parameter `param`. */
static enum reading read_argument(CallPath *self, const struct param *param, PyObject *arg, char *tag,
                                  uint64_t *value)
{
    if (arg == Py_None && (param->kind == POINTER || param->kind == ANY)) {
        *tag = 'n';
        *value = 0;
        return READ;
    }
    if (Py_TYPE(arg) == (PyTypeObject *)self->array_type && (param->kind == POINTER || param->kind == ANY)) {
        *tag = 'a';
        return read_array(self, arg, param->dtype, value);
    }
    if (PyFloat_CheckExact(arg) && (param->kind == FLOAT || param->kind == ANY)) {
        *tag = 'f';
        return read_float(arg, value);
    }
    if (param->kind == INTEGER || param->kind == FLOAT || param->kind == ANY) {
        *tag = 'i';
        return param->kind == INTEGER ? read_integer(arg, param->low, param->high, value)
                                      : read_integer(arg, INT64_MIN, INT64_MAX, value);
    }
    return BAIL;
}

static const struct param ANY_PARAM = {ANY, NULL, INT64_MIN, INT64_MAX};

/* Write the CALL frame of `args` with `request_id`; its size, 0 for the general path's turn, -1 on an error. */
static Py_ssize_t write_frame(CallPath *self, uint32_t request_id, PyObject *args)
{
    Py_ssize_t count = PyTuple_GET_SIZE(args);
    if (count > MAX_ARGS || (self->count >= 0 && count != self->count))
        return 0;
    unsigned char *tags = self->frame + HEADER_SIZE + PREFIX_SIZE;
    unsigned char *values = tags + count;
    for (Py_ssize_t i = 0; i < count; i++) {
        const struct param *param = self->count >= 0 ? &self->params[i] : &ANY_PARAM;
        char tag;
        uint64_t value;
        enum reading reading = read_argument(self, param, PyTuple_GET_ITEM(args, i), &tag, &value);
        if (reading != READ)
            return reading == BAIL ? 0 : -1;
        tags[i] = (unsigned char)tag;
        put_u64(values + 8 * i, value);
    }
    Py_ssize_t payload = PREFIX_SIZE + 9 * count;
    put_u32(self->frame + 4, request_id);
    put_u64(self->frame + 12, (uint64_t)payload);
    put_u16(self->frame + HEADER_SIZE + 4, (uint32_t)count);
    return HEADER_SIZE + payload;
}

/* -- the round trip --------------------------------------------------------------------------------------- */

/* Send `size` bytes of the frame on `fd` and receive up to a RESULT frame's size; 0, or -1 with a Python error. */
static int round_trip(CallPath *self, int fd, Py_ssize_t size)
{
    Py_ssize_t done = 0;
    ssize_t got = 0;
    int error = 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        while (done < size) {
            ssize_t sent = send(fd, self->frame + done, (size_t)(size - done), MSG_NOSIGNAL);
            if (sent < 0)
                break;
            done += sent;
        }
        if (done == size)
            got = recv(fd, self->reply, RESULT_FRAME_SIZE, 0);
        error = errno;
        Py_END_ALLOW_THREADS
        self->sent = done == size;
        if (self->sent && got >= 0) {
            self->received = got;
            return 0;
        }
        if (error != EINTR) {
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) /* a handler raised (KeyboardInterrupt): the stream is mid-call */
            return -1;
    }
}

/* The value of the reply in `reply` if it is the plain RESULT of `request_id`, else not_a_result. */
static PyObject *read_result(CallPath *self, uint32_t request_id)
{
    const unsigned char *reply = self->reply;
    if (self->received != RESULT_FRAME_SIZE || get_u32(reply) != (MAGIC_WORD | OP_RESULT << 24) ||
        get_u32(reply + 4) != request_id || get_u32(reply + 8) != 0 || get_u64(reply + 12) != RESULT_PAYLOAD)
        return new_ref(self->not_a_result);
    unsigned char tag = reply[HEADER_SIZE];
    uint64_t bits = get_u64(reply + HEADER_SIZE + 1);
    double number;
    memcpy(&number, &bits, sizeof number);
    if (tag == 'v')
        return new_ref(Py_None);
    if (self->returns_bool && (tag == 'i' || tag == 'u' || tag == 'f'))
        return PyBool_FromLong(tag == 'f' ? number != 0.0 : bits != 0);
    if (tag == 'i')
        return PyLong_FromLongLong((long long)bits);
    if (tag == 'u')
        return PyLong_FromUnsignedLongLong(bits);
    if (tag == 'f')
        return PyFloat_FromDouble(number);
    return new_ref(self->not_a_result);
}

PyDoc_STRVAR(call_doc, "call(request_id, args): the call's value, bail (nothing sent) or not_a_result.");

static PyObject *CallPath_call(CallPath *self, PyObject *const *argv, Py_ssize_t argc)
{
    if (argc != 2 || !PyTuple_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "call() takes a request id and a tuple of arguments");
        return NULL;
    }
    unsigned long request_id = PyLong_AsUnsignedLong(argv[0]);
    if (request_id == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (request_id > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a request id is 32 bits");
        return NULL;
    }
    self->sent = 0;
    self->received = 0;
    Py_ssize_t size = write_frame(self, (uint32_t)request_id, argv[1]);
    if (size <= 0)
        return size == 0 ? new_ref(self->bail) : NULL;
    int fd = PyObject_AsFileDescriptor(self->sock); /* the socket's fileno(): never a number it gave up */
    if (fd < 0) {
        PyErr_Clear();
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (round_trip(self, fd, size) < 0)
        return NULL;
    return read_result(self, (uint32_t)request_id);
}

PyDoc_STRVAR(received_bytes_doc, "received_bytes(): the bytes the last call received, for the general reader.");

static PyObject *CallPath_received_bytes(CallPath *self, PyObject *Py_UNUSED(ignored))
{
    return PyBytes_FromStringAndSize((const char *)self->reply, self->received);
}

static PyObject *CallPath_get_sent(CallPath *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->sent);
}

static PyObject *CallPath_get_received(CallPath *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->received);
}

/* -- construction ----------------------------------------------------------------------------------------- */

/* One entry of the plan: (kind, dtype or None, low, high), kind one of "any", "pointer", "integer", "float". */
static int read_param(PyObject *entry, struct param *param)
{
    const char *kind;
    PyObject *dtype;
    if (!PyArg_ParseTuple(entry, "sOLL", &kind, &dtype, &param->low, &param->high))
        return -1;
    static const char *const kinds[] = {[ANY] = "any", [POINTER] = "pointer", [INTEGER] = "integer",
                                        [FLOAT] = "float"};
    int found = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(kind, kinds[i]) == 0)
            found = i;
    if (found < 0) {
        PyErr_Format(PyExc_ValueError, "unknown parameter kind %s", kind);
        return -1;
    }
    param->kind = (enum kind)found;
    if (dtype != Py_None && !PyUnicode_Check(dtype)) {
        PyErr_SetString(PyExc_TypeError, "a parameter's dtype is a str or None");
        return -1;
    }
    param->dtype = dtype == Py_None ? NULL : new_ref(dtype);
    return 0;
}

static int read_plan(CallPath *self, PyObject *plan)
{
    if (plan == Py_None) {
        self->count = -1;
        return 0;
    }
    PyObject *entries = PySequence_Tuple(plan);
    if (entries == NULL)
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(entries);
    if (count > MAX_ARGS) {
        Py_DECREF(entries);
        PyErr_Format(PyExc_ValueError, "a call takes at most %d arguments", MAX_ARGS);
        return -1;
    }
    self->params = PyMem_Calloc((size_t)count + 1, sizeof *self->params);
    if (self->params == NULL) {
        Py_DECREF(entries);
        PyErr_NoMemory();
        return -1;
    }
    for (self->count = 0; self->count < count; self->count++)
        if (read_param(PyTuple_GET_ITEM(entries, self->count), &self->params[self->count]) < 0) {
            Py_DECREF(entries);
            return -1;
        }
    Py_DECREF(entries);
    return 0;
}

static int CallPath_init(CallPath *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock", "function_id", "session", "array_type", "plan", "returns_bool", "bail",
                               "not_a_result", NULL};
    unsigned int function_id;
    PyObject *plan;
    if (self->session != NULL) {
        PyErr_SetString(PyExc_TypeError, "a CallPath is made once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OIOO!OpOO", keywords, &self->sock, &function_id, &self->session,
                                     &PyType_Type, &self->array_type, &plan, &self->returns_bool, &self->bail,
                                     &self->not_a_result))
        return -1;
    Py_INCREF(self->sock);
    Py_INCREF(self->session);
    Py_INCREF(self->array_type);
    Py_INCREF(self->bail);
    Py_INCREF(self->not_a_result);
    put_u32(self->frame, MAGIC_WORD | OP_CALL << 24);
    put_u32(self->frame + 8, 0); /* no metadata */
    put_u32(self->frame + HEADER_SIZE, function_id);
    return read_plan(self, plan);
}

static int CallPath_traverse(CallPath *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->sock);
    Py_VISIT(self->session);
    Py_VISIT(self->array_type);
    Py_VISIT(self->bail);
    Py_VISIT(self->not_a_result);
    return 0;
}

static int CallPath_clear(CallPath *self)
{
    Py_CLEAR(self->sock);
    Py_CLEAR(self->session);
    Py_CLEAR(self->array_type);
    Py_CLEAR(self->bail);
    Py_CLEAR(self->not_a_result);
    if (self->params != NULL)
        for (Py_ssize_t i = 0; i < self->count; i++)
            Py_CLEAR(self->params[i].dtype);
    PyMem_Free(self->params);
    self->params = NULL;
    self->count = -1;
    return 0;
}

static void CallPath_dealloc(CallPath *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    CallPath_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMethodDef CallPath_methods[] = {
    {"call", (PyCFunction)(void (*)(void))CallPath_call, METH_FASTCALL, call_doc},
    {"received_bytes", (PyCFunction)CallPath_received_bytes, METH_NOARGS, received_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CallPath_getset[] = {
    {"sent", (getter)CallPath_get_sent, NULL, "whether the last call's frame was sent whole", NULL},
    {"received", (getter)CallPath_get_received, NULL, "how many bytes the last call received", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot CallPath_slots[] = {
    {Py_tp_doc, "CallPath(sock, function_id, session, array_type, plan, returns_bool, bail, not_a_result): the "
                "compiled call of one function of one session"},
    {Py_tp_init, CallPath_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, CallPath_dealloc},
    {Py_tp_traverse, CallPath_traverse},
    {Py_tp_clear, CallPath_clear},
    {Py_tp_methods, CallPath_methods},
    {Py_tp_getset, CallPath_getset},
    {0, NULL},
};

static PyType_Spec CallPath_spec = {
    .name = "farm.client._callpath.CallPath",
    .basicsize = sizeof(CallPath),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = CallPath_slots,
};

static int exec_module(PyObject *module)
{
    session_name = PyUnicode_InternFromString("session");
    id_name = PyUnicode_InternFromString("id");
    dtype_name_name = PyUnicode_InternFromString("dtype_name");
    if (session_name == NULL || id_name == NULL || dtype_name_name == NULL)
        return -1;
    PyObject *type = PyType_FromSpec(&CallPath_spec);
    if (type == NULL)
        return -1;
    if (PyModule_AddObject(module, "CallPath", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return PyModule_AddIntConstant(module, "MAX_ARGS", MAX_ARGS);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "farm.client._callpath",
    .m_doc = "The compiled call path of the client; see farm.client.calls.",
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__callpath(void)
{
    return PyModuleDef_Init(&module_def);
}
