/* Reductions: the sum of a float vector (accumulated in double, pairwise by blocks,
 * so the error stays near numpy's pairwise sum) and the maximum of an int32 vector. */
#include <stdint.h>

static double sum_block(const float *x, int64_t n)
{
    if (n <= 128) {
        double total = 0.0;
        for (int64_t i = 0; i < n; i++)
            total += x[i];
        return total;
    }
    const int64_t half = n / 2;
    return sum_block(x, half) + sum_block(x + half, n - half);
}

double sum_f32(const float *x, int64_t n)
{
    return n > 0 ? sum_block(x, n) : 0.0;
}

int32_t max_i32(const int32_t *x, int64_t n)
{
    int32_t best = INT32_MIN;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > best)
            best = x[i];
    return best;
}
