/* Kernels for the device_benchmark tests: one of known cost, one whose cost follows the compiler's flags and
   the CPU's contention, and one that counts its calls. */
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
