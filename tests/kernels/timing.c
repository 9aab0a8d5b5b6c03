/* Kernels of known cost, for the tests of time_evaluator. */
#include <stdint.h>
#include <time.h>

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spins on the CPU for at least ns nanoseconds; returns how many clock reads that took. */
int64_t spin_ns(int64_t ns)
{
    int64_t reads = 1;
    const int64_t end = now_ns() + ns;
    while (now_ns() < end)
        reads++;
    return reads;
}

/* Does nothing with four arguments: what the timing loop alone costs with a signature like vadd's. */
void nothing(const float *a, const float *b, float *c, int64_t n)
{
    (void)a;
    (void)b;
    (void)c;
    (void)n;
}
