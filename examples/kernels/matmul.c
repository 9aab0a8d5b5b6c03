/* Row-major matrix product: c[m x n] = a[m x k] . b[k x n], single precision,
 * blocked over k so that each row of b streams through the cache once per row of a. */
#include <stdint.h>

void matmul_f32(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)
{
    for (int64_t i = 0; i < m; i++) {
        float *row = c + i * n;
        for (int64_t j = 0; j < n; j++)
            row[j] = 0.0f;
        for (int64_t p = 0; p < k; p++) {
            const float scale = a[i * k + p];
            const float *brow = b + p * n;
            for (int64_t j = 0; j < n; j++)
                row[j] += scale * brow[j];
        }
    }
}
