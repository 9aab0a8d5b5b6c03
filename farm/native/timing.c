/* TIME (docs/protocol.md §4.9): TVM's time_evaluator semantics, the loop in C around libffi calls, timed with
 * the monotonic clock. The loop's own cost (the libffi call, the clock) is measured as the Python board measures it,
 * on libc's labs given the function's prototype and arguments, and subtracted. */
#define _GNU_SOURCE
#include "calls.h"

#include <dlfcn.h>
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GOLDEN_RATIO 1.618
#define CALIBRATION_BATCH_NS 2000000.0
#define CALIBRATION_BATCHES 9
#define SINGLE_BATCHES 101
/* Calls of the no-op after a cache flush: the loop and libffi back in the caches, the arguments' memory not. */
#define REWARM_CALLS 3
/* Repeats whose timed batch lasted this long report the share of it the process spent on a CPU. */
#define SHARE_BATCH_NS 1000000
#define DEFAULT_EVICTION_BYTES (64ull << 20)
#define MAX_COUNT 2147483647ll
#define MAX_REPEAT 100000
#define FLUSH_NON_FIRST_ARG "cache_flush_cpu_non_first_arg"

static const char *const OPTION_NAMES[] = {"number",       "repeat", "min_repeat_ms",
                                           "limit_zero_time_iterations", "cooldown_interval_ms",
                                           "repeats_to_cooldown", "cache_flush_bytes", "f_preproc", "pin_cpu"};
static const long long LOWEST[] = {1, 1, 0, 0, 0, 1, 0};
static const long long DEFAULTS[] = {10, 1, 0, 100, 0, 1, 0};
enum { NUMBER, REPEAT, MIN_REPEAT_MS, LIMIT_ZERO, COOLDOWN_MS, REPEATS_TO_COOLDOWN, FLUSH_BYTES, COUNTS };

typedef struct {
    long long count[COUNTS];
    int flush_non_first; /* f_preproc */
    int pin_cpu;         /* -1: none */
} TimingOptions;

static int by_text(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int timing_options(Session *s, const JValue *meta, TimingOptions *o) {
    const char *unknown[64];
    size_t count = 0;
    for (size_t k = 0; k < meta->len && count < 64; k++) {
        int known = 0;
        for (size_t j = 0; j < sizeof OPTION_NAMES / sizeof OPTION_NAMES[0]; j++)
            known |= !strcmp(meta->members[k].key, OPTION_NAMES[j]);
        known |= !strcmp(meta->members[k].key, "release"); /* every request may carry it: handled before */
        if (!known) unknown[count++] = meta->members[k].key;
    }
    if (count) {
        qsort(unknown, count, sizeof unknown[0], by_text);
        Buf quoted = {0};
        py_repr(&quoted, unknown[0], strlen(unknown[0]) < 100 ? strlen(unknown[0]) : 100);
        fail(s, "ArgumentError", "time_evaluator: unknown option %s", buf_str(&quoted));
        buf_free(&quoted);
        return -1;
    }
    for (int k = 0; k < COUNTS; k++) {
        const JValue *v = json_get(meta, OPTION_NAMES[k]);
        long long highest = k == REPEAT ? MAX_REPEAT : k == FLUSH_BYTES ? (long long)s->order->max_message_size
                                                                          : MAX_COUNT;
        if (!v) {
            o->count[k] = DEFAULTS[k];
            continue;
        }
        if (v->type != J_INT)
            return fail(s, "ArgumentError", "time_evaluator: %s must be an integer, not a %s", OPTION_NAMES[k],
                        json_type_name(v));
        if (v->big || v->i < LOWEST[k] || v->i > highest) {
            char value[32] = "out of range";
            if (!v->big) snprintf(value, sizeof value, "%lld", (long long)v->i);
            return fail(s, "ArgumentError", "time_evaluator: %s is %s; it must be between %lld and %lld",
                        OPTION_NAMES[k], value, LOWEST[k], highest);
        }
        o->count[k] = v->i;
    }
    const JValue *preproc = json_get(meta, "f_preproc");
    o->flush_non_first = 0;
    if (preproc && !(preproc->type == J_STRING && (!preproc->len || !strcmp(preproc->s, FLUSH_NON_FIRST_ARG))))
        return fail(s, "ArgumentError",
                    "time_evaluator: f_preproc is not one this board offers ('%s', or '' for none)",
                    FLUSH_NON_FIRST_ARG);
    o->flush_non_first = preproc && preproc->len;
    const JValue *pin = json_get(meta, "pin_cpu");
    o->pin_cpu = -1;
    if (pin && pin->type != J_NULL) {
        if (pin->type != J_INT || pin->big || pin->i < 0 || pin->i > 1 << 20)
            return fail(s, "ArgumentError", "time_evaluator: pin_cpu must be a CPU number (0 or more) or None");
        o->pin_cpu = (int)pin->i;
    }
    return 0;
}

int timing_check(Session *s, const JValue *meta) {
    TimingOptions o;
    return timing_options(s, meta, &o);
}

/* Nanoseconds `number` calls take. */
static int64_t batch(ffi_cif *cif, void *function, void **values, uint64_t number) {
    _Alignas(16) unsigned char result[16];
    int64_t start = monotonic_ns();
    for (uint64_t k = 0; k < number; k++) ffi_call(cif, FFI_FN(function), result, values);
    return monotonic_ns() - start;
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, size_t n) {
    qsort(values, n, sizeof *values, ascending);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/* Python's statistics.quantiles(values, n=4) (the exclusive method): the first and the third quartile. */
static void quartiles(double *values, size_t n, double *q1, double *q3) {
    qsort(values, n, sizeof *values, ascending);
    double *out[2] = {q1, q3};
    long m = (long)n + 1;
    for (int i = 1, k = 0; i <= 3; i += 2, k++) {
        long j = i * m / 4;
        j = j < 1 ? 1 : j > (long)n - 1 ? (long)n - 1 : j;
        long delta = i * m - j * 4;
        *out[k] = (values[j - 1] * (double)(4 - delta) + values[j] * (double)delta) / 4;
    }
}

typedef struct {
    double per_call_ns, batch_ns, spread_ns;
} Overhead;

static Overhead calibrate(ffi_cif *cif, void **values) {
    void *no_op = dlsym(RTLD_DEFAULT, "labs");
    uint64_t number = 1000;
    int64_t elapsed;
    for (;;) { /* bounded: each pass doubles the batch */
        elapsed = batch(cif, no_op, values, number);
        if (elapsed >= CALIBRATION_BATCH_NS / 2 || number >= (1ull << 40)) break;
        number *= 2;
    }
    double scaled = (double)number * CALIBRATION_BATCH_NS / (double)(elapsed > 1 ? elapsed : 1);
    number = scaled < 1 ? 1 : (uint64_t)scaled;
    double per_call[CALIBRATION_BATCHES], single[SINGLE_BATCHES];
    for (int k = 0; k < CALIBRATION_BATCHES; k++) per_call[k] = (double)batch(cif, no_op, values, number) / (double)number;
    for (int k = 0; k < SINGLE_BATCHES; k++) single[k] = (double)batch(cif, no_op, values, 1);
    Overhead o;
    o.per_call_ns = median(per_call, CALIBRATION_BATCHES);
    double q1, q3;
    quartiles(per_call, CALIBRATION_BATCHES, &q1, &q3);
    o.spread_ns = q3 - q1;
    double one = median(single, SINGLE_BATCHES) - o.per_call_ns;
    o.batch_ns = one > 0 ? one : 0;
    return o;
}

/* The largest CPU cache of cpu0, from sysfs; half the default eviction where it is not exposed. */
static uint64_t last_level_cache_bytes(void) {
    uint64_t largest = 0;
    DIR *directory = opendir("/sys/devices/system/cpu/cpu0/cache");
    struct dirent *entry;
    while (directory && (entry = readdir(directory))) {
        if (strncmp(entry->d_name, "index", 5)) continue;
        char path[300], text[64], *end;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/%s/size", entry->d_name);
        if (read_text_file(path, text, sizeof text) <= 0) continue;
        unsigned long long value = strtoull(text, &end, 10);
        uint64_t scale = *end == 'K' ? 1 << 10 : *end == 'M' ? 1 << 20 : *end == 'G' ? 1 << 30 : 1;
        if (end != text && value * scale > largest) largest = value * scale;
    }
    if (directory) closedir(directory);
    return largest ? largest : DEFAULT_EVICTION_BYTES / 2;
}

typedef struct {
    char *copy_to, *copy_from, *evict, *scratch;
    size_t copy_size, evict_size;
    const Array *first;
    Prepared *rewarm; /* the call whose path a flush evicts too, made again through the no-op */
} Flusher;

static int flusher_init(Flusher *f, const TimingOptions *o, const Array *first, Prepared *call) {
    memset(f, 0, sizeof *f);
    f->first = first;
    f->rewarm = call;
    if (o->count[FLUSH_BYTES]) {
        f->copy_size = (size_t)o->count[FLUSH_BYTES];
        f->copy_to = calloc(1, f->copy_size);
        f->copy_from = calloc(1, f->copy_size);
        if (!f->copy_to || !f->copy_from) return -1;
    }
    if (o->flush_non_first) {
        f->evict_size = (size_t)(2 * last_level_cache_bytes());
        f->evict = malloc(f->evict_size);
        f->scratch = malloc(first && first->nbytes ? (size_t)first->nbytes : 1);
        if (!f->evict || !f->scratch) return -1;
    }
    return 0;
}

static void flusher_free(Flusher *f) {
    free(f->copy_to);
    free(f->copy_from);
    free(f->evict);
    free(f->scratch);
}

static void rewarm(Flusher *f) { batch(f->rewarm->use, dlsym(RTLD_DEFAULT, "labs"), f->rewarm->values, REWARM_CALLS); }

static void before_repeat(Flusher *f) {
    if (!f->evict) return;
    memset(f->evict, 0x5A, f->evict_size);
    if (f->first && f->first->nbytes) memcpy(f->scratch, f->first->data, (size_t)f->first->nbytes);
    __asm__ __volatile__("" : : "r"(f->evict), "r"(f->scratch) : "memory");
    rewarm(f);
}

static void before_batch(Flusher *f) {
    if (!f->copy_to) return;
    memcpy(f->copy_to, f->copy_from, f->copy_size);
    __asm__ __volatile__("" : : "r"(f->copy_to) : "memory");
    rewarm(f);
}

static int64_t process_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void sleep_ms(long long ms) {
    struct timespec pause = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&pause, &pause)) {
    }
}

static int pin(Session *s, int cpu, cpu_set_t *before) {
    if (cpu < 0) return 0;
    if (sched_getaffinity(0, sizeof *before, before)) return fail(s, "OSError", "cannot read the session's CPUs");
    if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, before)) {
        Buf allowed = {0};
        for (int k = 0; k < CPU_SETSIZE; k++)
            if (CPU_ISSET(k, before)) buf_addf(&allowed, "%s%d", allowed.len ? ", " : "", k);
        fail(s, "ArgumentError", "pin_cpu=%d is not among the CPUs this session may run on (%s)", cpu,
             buf_str(&allowed));
        buf_free(&allowed);
        return -1;
    }
    cpu_set_t only;
    CPU_ZERO(&only);
    CPU_SET(cpu, &only);
    sched_setaffinity(0, sizeof only, &only);
    return 0;
}

static int time_loop(Session *s, Prepared *call, const TimingOptions *o, Flusher *flusher, Reply *r) {
    void *function = call->function->symbol;
    long long repeat = o->count[REPEAT], min_repeat_ms = o->count[MIN_REPEAT_MS];
    double *results = malloc(sizeof(double) * (size_t)repeat), *others = malloc(sizeof(double) * (size_t)(repeat + 1));
    double *on_cpu = malloc(sizeof(double) * (size_t)repeat);
    size_t shares = 0;
    if (!results || !others || !on_cpu) {
        free(results);
        free(others);
        free(on_cpu);
        return fail(s, "MemoryError", "no memory for %lld figures", repeat);
    }
    batch(call->use, function, call->values, 1); /* the warm-up run, discarded */
    Overhead overhead = calibrate(call->use, call->values);
    size_t counted = 0;
    long now = others_running();
    if (now >= 0) others[counted++] = (double)now;
    double number = (double)o->count[NUMBER];
    long long clamped = 0;
    for (long long index = 0; index < repeat; index++) {
        before_repeat(flusher);
        int64_t elapsed = 0, cpu_time = 0;
        long long zero_times = 0;
        for (;;) {
            if (elapsed > 0) {
                double wanted = (double)min_repeat_ms / ((double)elapsed / 1e6 / number) + 1;
                number = (double)(uint64_t)(wanted > number * GOLDEN_RATIO ? wanted : number * GOLDEN_RATIO);
                if (number > 1e15) number = 1e15;
            }
            before_batch(flusher);
            cpu_time = process_cpu_ns();
            elapsed = batch(call->use, function, call->values, (uint64_t)number);
            cpu_time = process_cpu_ns() - cpu_time;
            zero_times += elapsed == 0;
            if ((double)elapsed / 1e6 >= (double)min_repeat_ms || zero_times >= o->count[LIMIT_ZERO]) break;
        }
        double per_run = ((double)elapsed - overhead.batch_ns) / number - overhead.per_call_ns;
        clamped += per_run < 0;
        results[index] = (per_run > 0 ? per_run : 0) / 1e9;
        if (elapsed >= SHARE_BATCH_NS) on_cpu[shares++] = (double)cpu_time / (double)elapsed;
        now = others_running();
        if (now >= 0) others[counted++] = (double)now;
        if (o->count[COOLDOWN_MS] > 0 && index % o->count[REPEATS_TO_COOLDOWN] == 0) sleep_ms(o->count[COOLDOWN_MS]);
    }
    int cpu = o->pin_cpu >= 0 ? o->pin_cpu : current_cpu();
    Buf *b = &r->meta;
    buf_adds(b, "{\"results\":[");
    for (long long k = 0; k < repeat; k++) {
        if (k) buf_add(b, ",", 1);
        json_double(b, results[k]);
    }
    buf_addf(b, "],\"number\":%llu,\"overhead_s\":", (unsigned long long)number);
    json_double(b, overhead.per_call_ns / 1e9);
    buf_adds(b, ",\"overhead_batch_s\":");
    json_double(b, overhead.batch_ns / 1e9);
    buf_adds(b, ",\"overhead_spread_s\":");
    json_double(b, overhead.spread_ns / 1e9);
    buf_addf(b, ",\"clamped\":%lld,\"on_cpu\":[", clamped);
    for (size_t k = 0; k < shares; k++) buf_addf(b, "%s%.3f", k ? "," : "", on_cpu[k]);
    buf_addf(b, "],\"cpu\":%d,\"state\":", cpu);
    machine_state(b, cpu, counted ? (long)median(others, counted) : -1);
    buf_adds(b, ",\"method\":\"board-native\"}");
    free(results);
    free(others);
    free(on_cpu);
    return b->failed ? fail(s, "MemoryError", "no memory for the figures") : 0;
}

int op_time(Session *s, const JValue *meta, const unsigned char *payload, uint64_t size, Reply *r) {
    TimingOptions o = {0};
    if (timing_options(s, meta, &o)) return -1;
    Prepared *call = malloc(sizeof(Prepared));
    if (!call) return fail(s, "MemoryError", "no memory for a call");
    if (prepare_call(s, payload, size, call)) {
        free(call);
        return -1;
    }
    Flusher flusher;
    int status =
        flusher_init(&flusher, &o, call->first, call) ? fail(s, "MemoryError", "no memory to flush the caches") : 0;
    char activity[512];
    snprintf(activity, sizeof activity, "timing %s", call->function->label);
    status_running(s->order->status, activity);
    cpu_set_t before;
    if (status == 0 && (status = pin(s, o.pin_cpu, &before)) == 0) {
        status = time_loop(s, call, &o, &flusher, r);
        if (o.pin_cpu >= 0) sched_setaffinity(0, sizeof before, &before);
    }
    flusher_free(&flusher);
    free(call);
    return status;
}
