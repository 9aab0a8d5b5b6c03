/* The reference for on-board timing: a plain C loop on the host timing a kernel of a shared library.
 *
 *   host_loop LIBRARY SYMBOL ABI KERNEL SIZE NUMBER REPEAT [FLUSH_BYTES [SHIFT]]
 *
 * ABI is "c" (the kernel's own C prototype, as the farm's kernels) or "tvm-ffi" (a function exported by
 * TVM: int f(void *self, const Any *args, int32_t count, Any *result), its tensors passed as DLTensor
 * pointers). KERNEL is "noop" (void f(void)), "vadd" (c = a + b over SIZE float32) or "matmul" (c = a . b,
 * SIZE x SIZE float32, row-major).
 *
 * After one untimed warm-up call, each of REPEAT repeats times NUMBER calls with
 * clock_gettime(CLOCK_MONOTONIC) and prints "repeat SECONDS", SECONDS per call. With FLUSH_BYTES, a buffer of
 * that size is copied over another before each call, untimed, and each call is timed on its own. The result
 * is then checked and "check ok" printed; the exit status is 1 on a wrong result, 2 on bad arguments.
 *
 * The arrays are placed as the board places its own. With SHIFT (bytes, a multiple of 64; -1: the default),
 * a starts on a page boundary and b and c SHIFT and 2 SHIFT bytes past one: a scalar loop's speed depends on
 * these distances (a load whose address matches an earlier store's in its low 12 bits waits as if it
 * depended on it: "4K aliasing").
 */
#define _DEFAULT_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { PAGE = 4096, MAPPED_BYTES = 256 << 10 }; /* the board maps each array this big on pages of its own */

typedef struct {
    int32_t device_type;
    int32_t device_id;
} Device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DataType;

typedef struct { /* DLPack's DLTensor */
    void *data;
    Device device;
    int32_t ndim;
    DataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} Tensor;

typedef struct { /* TVM FFI's 16-byte value: a type index, padding, a payload */
    int32_t type_index;
    uint32_t padding;
    void *pointer;
} Value;

enum { VALUE_NONE = 0, VALUE_TENSOR_POINTER = 7, DEVICE_CPU = 1, CODE_FLOAT = 2 };

typedef int (*FfiFunction)(void *, const Value *, int32_t, Value *);
typedef void (*NoopFunction)(void);
typedef void (*VaddFunction)(const float *, const float *, float *, int64_t);
typedef void (*MatmulFunction)(const float *, const float *, float *, int64_t, int64_t, int64_t);

/* Called by a TVM library only when it refuses its arguments: say so and stop. */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t count)
{
    fprintf(stderr, "the TVM function raised %s:", kind);
    for (int32_t i = 0; i < count; i++)
        if (parts[i])
            fprintf(stderr, " %s", parts[i]);
    fprintf(stderr, "\n");
    exit(1);
}

struct Call {
    const char *abi, *kernel;
    void *symbol;
    int64_t size;
    float *a, *b, *c;
    Tensor tensors[3];
    int64_t shapes[3][2];
    Value values[3];
    int32_t count;
};

typedef void (*Invoke)(const struct Call *);

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "host_loop: %s%s\n", what, detail ? detail : "");
    exit(2);
}

static double now(void)
{
    struct timespec clock;
    clock_gettime(CLOCK_MONOTONIC, &clock);
    return (double)clock.tv_sec + 1e-9 * (double)clock.tv_nsec;
}

static void *mapped(size_t bytes)
{
    void *data = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED)
        fail("out of memory", NULL);
#ifdef MADV_HUGEPAGE
    madvise(data, bytes, MADV_HUGEPAGE);
#endif
    return data;
}

/* The three arrays, placed as the board places its arrays (SHIFT < 0: one mapping each from MAPPED_BYTES on,
 * else the heap, 64-byte aligned), or in one mapping, b SHIFT bytes and c twice SHIFT bytes past where a page
 * boundary would put them. */
static void place(struct Call *call, int64_t count, long shift)
{
    size_t bytes = (size_t)count * sizeof(float), pages = (bytes + PAGE - 1) / PAGE * PAGE;
    float **arrays[3] = {&call->a, &call->b, &call->c};
    unsigned char *block = shift >= 0 ? mapped(3 * pages + 2 * (size_t)shift + PAGE) : NULL;
    for (int i = 0; i < 3; i++) {
        if (block)
            *arrays[i] = (float *)(block + (size_t)i * (pages + (size_t)shift));
        else if (bytes >= MAPPED_BYTES)
            *arrays[i] = mapped(bytes);
        else if (!(*arrays[i] = aligned_alloc(64, (bytes + 63) / 64 * 64)))
            fail("out of memory", NULL);
    }
}

static void prepare(struct Call *call, long shift)
{
    int matmul = strcmp(call->kernel, "matmul") == 0;
    int64_t count = matmul ? call->size * call->size : call->size;
    place(call, count, shift);
    for (int64_t i = 0; i < count; i++) { /* touched now: no page faults in the timed calls */
        call->a[i] = (float)(i % 97) * 0.25f;
        call->b[i] = (float)(i % 89) * 0.5f;
        call->c[i] = 0.0f;
    }
    float *data[3] = {call->a, call->b, call->c};
    for (int i = 0; i < 3; i++) {
        call->shapes[i][0] = call->size;
        call->shapes[i][1] = call->size;
        Tensor tensor = {data[i], {DEVICE_CPU, 0}, matmul ? 2 : 1, {CODE_FLOAT, 32, 1}, call->shapes[i], NULL, 0};
        call->tensors[i] = tensor;
        call->values[i].type_index = VALUE_TENSOR_POINTER;
        call->values[i].padding = 0;
        call->values[i].pointer = &call->tensors[i];
    }
}

static void invoke_ffi(const struct Call *call)
{
    Value result = {VALUE_NONE, 0, NULL};
    if (((FfiFunction)call->symbol)(NULL, call->values, call->count, &result) != 0)
        fail("the TVM function returned an error", NULL);
}

static void invoke_vadd(const struct Call *call)
{
    ((VaddFunction)call->symbol)(call->a, call->b, call->c, call->size);
}

static void invoke_matmul(const struct Call *call)
{
    ((MatmulFunction)call->symbol)(call->a, call->b, call->c, call->size, call->size, call->size);
}

static void invoke_noop(const struct Call *call)
{
    ((NoopFunction)call->symbol)();
}

/* How to call the kernel, chosen once: the timed loop only calls through this pointer. */
static Invoke invoker(struct Call *call)
{
    call->count = strcmp(call->kernel, "noop") == 0 ? 0 : 3;
    if (strcmp(call->abi, "tvm-ffi") == 0)
        return invoke_ffi;
    if (strcmp(call->abi, "c") != 0)
        fail("unknown ABI: ", call->abi);
    if (strcmp(call->kernel, "vadd") == 0)
        return invoke_vadd;
    if (strcmp(call->kernel, "matmul") == 0)
        return invoke_matmul;
    if (strcmp(call->kernel, "noop") == 0)
        return invoke_noop;
    fail("unknown kernel: ", call->kernel);
    return NULL;
}

/* Whether c holds a + b, or a . b at a sample of its elements (against a double-precision sum). */
static int correct(const struct Call *call)
{
    int64_t n = call->size;
    if (strcmp(call->kernel, "vadd") == 0) {
        for (int64_t i = 0; i < n; i++)
            if (call->c[i] != call->a[i] + call->b[i])
                return 0;
        return 1;
    }
    if (strcmp(call->kernel, "matmul") != 0)
        return 1;
    for (int64_t sample = 0; sample < 64; sample++) {
        int64_t i = (sample * 7919) % n, j = (sample * 104729) % n;
        double sum = 0.0;
        for (int64_t p = 0; p < n; p++)
            sum += (double)call->a[i * n + p] * (double)call->b[p * n + j];
        if (fabs(call->c[i * n + j] - sum) > 1e-4 * fabs(sum) + 1e-3)
            return 0;
    }
    return 1;
}

/* As TVM's cache_flush_bytes and the board's: one buffer copied over another. */
static void flush(unsigned char *target, const unsigned char *source, long bytes)
{
    memcpy(target, source, (size_t)bytes);
    __asm__ __volatile__("" : : "r"(target) : "memory"); /* the copy is kept */
}

int main(int argc, char **argv)
{
    if (argc < 8 || argc > 10)
        fail("usage: host_loop LIBRARY SYMBOL c|tvm-ffi noop|vadd|matmul SIZE NUMBER REPEAT [FLUSH_BYTES [SHIFT]]",
             NULL);
    struct Call call = {.abi = argv[3], .kernel = argv[4], .size = atoll(argv[5])};
    long number = atol(argv[6]), repeat = atol(argv[7]), flush_bytes = argc > 8 ? atol(argv[8]) : 0;
    long shift = argc > 9 ? atol(argv[9]) : -1;
    if (number < 1 || repeat < 1 || call.size < 1 || flush_bytes < 0 || shift < -1 || (shift > 0 && shift % 64))
        fail("SIZE, NUMBER and REPEAT must be at least 1, FLUSH_BYTES at least 0, SHIFT a multiple of 64", NULL);
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library)
        fail("dlopen: ", dlerror());
    call.symbol = dlsym(library, argv[2]);
    if (!call.symbol)
        fail("dlsym: ", dlerror());
    Invoke invoke = invoker(&call);
    prepare(&call, shift);
    unsigned char *buffer = flush_bytes ? calloc(2, (size_t)flush_bytes) : NULL; /* target, then source */
    if (flush_bytes && !buffer)
        fail("out of memory", NULL);
    invoke(&call); /* the warm-up */
    for (long r = 0; r < repeat; r++) {
        double total = 0.0;
        if (buffer) {
            for (long i = 0; i < number; i++) {
                flush(buffer, buffer + flush_bytes, flush_bytes);
                double began = now();
                invoke(&call);
                total += now() - began;
            }
        } else {
            double began = now();
            for (long i = 0; i < number; i++)
                invoke(&call);
            total = now() - began;
        }
        printf("repeat %.9e\n", total / (double)number);
    }
    if (!correct(&call)) {
        fprintf(stderr, "host_loop: %s computed a wrong result\n", argv[2]);
        return 1;
    }
    printf("check ok\n");
    return 0;
}
