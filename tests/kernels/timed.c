/* Kernels for the time_evaluator and device_benchmark tests: one of known cost, one whose cost follows the
   compiler's flags and the CPU's contention, one slow only at first, one that does nothing, and one that counts
   its calls. */
#include <stdint.h>
#include <time.h>

static int64_t elapsed_ns(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - start->tv_sec) * 1000000000 + (now.tv_nsec - start->tv_nsec);
}

/* Returns once ns nanoseconds of the monotonic clock have passed: its time is known whatever the CPU does. */
void spin_ns(int64_t ns)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (elapsed_ns(&start) < ns)
        ;
}

/* A deliberately slowed build defines more rounds: the same steps done that many times over. */
#ifndef LCG_ROUNDS
#define LCG_ROUNDS 1
#endif

/* n steps (times LCG_ROUNDS) of a linear congruential generator: arithmetic whose time depends on the build
   and on the CPU time the process gets. */
uint64_t lcg_steps(int64_t n)
{
    uint64_t x = 1;
    for (int64_t i = 0; i < n * LCG_ROUNDS; i++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    return x;
}

static int64_t calls;

/* Counts its calls, for telling whether anything ran. */
void counted(void)
{
    calls++;
}

int64_t call_count(void)
{
    return calls;
}

/* Spins slow_ns for each of its first slow_calls calls, then fast_ns: a board busy for a while, then quiet. */
void slow_at_first(int64_t slow_calls, int64_t slow_ns, int64_t fast_ns)
{
    static int64_t made;
    spin_ns(made++ < slow_calls ? slow_ns : fast_ns);
}

/* Does nothing with four arguments: what the timing loop alone costs with a signature like vadd's. */
void nothing(const float *a, const float *b, float *c, int64_t n)
{
    (void)a;
    (void)b;
    (void)c;
    (void)n;
}
