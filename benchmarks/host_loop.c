/* The reference for on-board timing: a plain C loop on the host timing a kernel of a shared library.
 *
 *   host_loop LIBRARY SYMBOL c|tvm-ffi noop|vadd|matmul SIZE NUMBER REPEAT [FLUSH_BYTES]
 *
 * ABI "c" calls the kernel by its own prototype (void noop(void); vadd over SIZE float32; matmul_f32 of
 * SIZE x SIZE float32, row-major); "tvm-ffi" calls a function exported by TVM, int f(void *self, const Any
 * *args, int32_t count, Any *result), with the arrays as DLTensor pointers. After one warm-up call, each
 * repeat times NUMBER calls with CLOCK_MONOTONIC and prints "repeat SECONDS" (per call). With FLUSH_BYTES, a
 * buffer that big is copied over another before each call, untimed, and each call is timed on its own. Then
 * "check ok" if c is right; the exit status is 1 on a wrong result, 2 on bad arguments. The arrays are placed
 * as the board places its own: a mapping each from MAPPED_BYTES on (huge pages advised), else the heap.
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

enum { MAPPED_BYTES = 256 << 10, VALUE_TENSOR_POINTER = 7, DEVICE_CPU = 1, CODE_FLOAT = 2 };

typedef struct { /* DLPack's DLTensor */
    void *data;
    int32_t device_type, device_id, ndim;
    uint8_t code, bits;
    uint16_t lanes;
    int64_t *shape, *strides;
    uint64_t byte_offset;
} Tensor;

typedef struct { /* TVM FFI's 16-byte value: a type index, padding, a payload */
    int32_t type_index;
    uint32_t padding;
    void *pointer;
} Value;

typedef int (*FfiFunction)(void *, const Value *, int32_t, Value *);

struct Call {
    const char *abi, *kernel;
    void *symbol;
    int64_t size, shape[2];
    float *a, *b, *c;
    Tensor tensors[3];
    Value values[3];
};

/* Called by a TVM library only when it refuses its arguments: say so and stop. */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t count)
{
    fprintf(stderr, "the TVM function raised %s:", kind);
    for (int32_t i = 0; i < count; i++)
        fprintf(stderr, " %s", parts[i] ? parts[i] : "");
    fprintf(stderr, "\n");
    exit(1);
}

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

static float *placed(size_t bytes)
{
    void *data = bytes < MAPPED_BYTES ? aligned_alloc(64, (bytes + 63) / 64 * 64)
                                      : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!data || data == MAP_FAILED)
        fail("out of memory", NULL);
#ifdef MADV_HUGEPAGE
    if (bytes >= MAPPED_BYTES)
        madvise(data, bytes, MADV_HUGEPAGE);
#endif
    return data;
}

static int is(const struct Call *call, const char *kernel)
{
    return strcmp(call->kernel, kernel) == 0;
}

static void prepare(struct Call *call)
{
    int64_t count = is(call, "matmul") ? call->size * call->size : call->size;
    float **arrays[3] = {&call->a, &call->b, &call->c};
    call->shape[0] = call->shape[1] = call->size;
    for (int i = 0; i < 3; i++) {
        *arrays[i] = placed((size_t)count * sizeof(float));
        int32_t ndim = is(call, "matmul") ? 2 : 1;
        call->tensors[i] = (Tensor){*arrays[i], DEVICE_CPU, 0, ndim, CODE_FLOAT, 32, 1, call->shape, NULL, 0};
        call->values[i] = (Value){VALUE_TENSOR_POINTER, 0, &call->tensors[i]};
    }
    for (int64_t i = 0; i < count; i++) { /* touched now: no page faults in the timed calls */
        call->a[i] = (float)(i % 97) * 0.25f;
        call->b[i] = (float)(i % 89) * 0.5f;
        call->c[i] = 0.0f;
    }
}

static void invoke_ffi(const struct Call *call)
{
    Value result = {0, 0, NULL};
    if (((FfiFunction)call->symbol)(NULL, call->values, is(call, "noop") ? 0 : 3, &result) != 0)
        fail("the TVM function returned an error", NULL);
}

static void invoke_vadd(const struct Call *call)
{
    ((void (*)(const float *, const float *, float *, int64_t))call->symbol)(call->a, call->b, call->c, call->size);
}

static void invoke_matmul(const struct Call *call)
{
    int64_t n = call->size;
    ((void (*)(const float *, const float *, float *, int64_t, int64_t, int64_t))call->symbol)(call->a, call->b,
                                                                                             call->c, n, n, n);
}

static void invoke_noop(const struct Call *call)
{
    ((void (*)(void))call->symbol)();
}

/* Whether c holds a + b, or a . b at a sample of its elements (against a double-precision sum). */
static int correct(const struct Call *call)
{
    int64_t n = call->size;
    if (is(call, "vadd")) {
        for (int64_t i = 0; i < n; i++)
            if (call->c[i] != call->a[i] + call->b[i])
                return 0;
    } else if (is(call, "matmul")) {
        for (int64_t sample = 0; sample < 64; sample++) {
            int64_t i = (sample * 7919) % n, j = (sample * 104729) % n;
            double sum = 0.0;
            for (int64_t p = 0; p < n; p++)
                sum += (double)call->a[i * n + p] * (double)call->b[p * n + j];
            if (fabs(call->c[i * n + j] - sum) > 1e-4 * fabs(sum) + 1e-3)
                return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 8 || argc > 9)
        fail("usage: host_loop LIBRARY SYMBOL c|tvm-ffi noop|vadd|matmul SIZE NUMBER REPEAT [FLUSH_BYTES]", NULL);
    struct Call call = {.abi = argv[3], .kernel = argv[4], .size = atoll(argv[5])};
    long number = atol(argv[6]), repeat = atol(argv[7]), flush_bytes = argc > 8 ? atol(argv[8]) : 0;
    if (number < 1 || repeat < 1 || call.size < 1 || flush_bytes < 0)
        fail("SIZE, NUMBER and REPEAT must be at least 1, FLUSH_BYTES at least 0", NULL);
    void (*invoke)(const struct Call *) = invoke_noop; /* chosen once: the timed loop only calls through it */
    if (strcmp(call.abi, "tvm-ffi") == 0)
        invoke = invoke_ffi;
    else if (strcmp(call.abi, "c") != 0)
        fail("unknown ABI: ", call.abi);
    else if (is(&call, "vadd"))
        invoke = invoke_vadd;
    else if (is(&call, "matmul"))
        invoke = invoke_matmul;
    else if (!is(&call, "noop"))
        fail("unknown kernel: ", call.kernel);
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library || !(call.symbol = dlsym(library, argv[2])))
        fail("dlopen or dlsym: ", dlerror());
    prepare(&call);
    unsigned char *buffer = flush_bytes ? calloc(2, (size_t)flush_bytes) : NULL; /* target, then source */
    if (flush_bytes && !buffer)
        fail("out of memory", NULL);
    invoke(&call); /* the warm-up */
    for (long r = 0; r < repeat; r++) {
        double total = 0.0;
        if (buffer) {
            for (long i = 0; i < number; i++) {
                memcpy(buffer, buffer + flush_bytes, (size_t)flush_bytes); /* as TVM's cache_flush_bytes */
                __asm__ __volatile__("" : : "r"(buffer) : "memory");       /* the copy is kept */
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
