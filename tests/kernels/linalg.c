/* Kernels with known numpy equivalents. */
#include <stdint.h>

/* c[m][n] = a[m][k] @ b[k][n], row-major float32 */
void matmul(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < k; p++)
                acc += a[i * k + p] * b[p * n + j];
            c[i * n + j] = acc;
        }
}

/* sum of a float64 vector */
double sum_f64(const double *x, int64_t n)
{
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++)
        acc += x[i];
    return acc;
}

/* out[0] = sum, out[1] = max of an int32 vector (a reduction with an output array) */
void reduce_i32(const int32_t *x, int64_t n, int64_t *out)
{
    int64_t acc = 0, best = n ? x[0] : 0;
    for (int64_t i = 0; i < n; i++) {
        acc += x[i];
        if (x[i] > best)
            best = x[i];
    }
    out[0] = acc;
    out[1] = best;
}

/* y = alpha * x + y over float64 */
void axpy(double alpha, const double *x, double *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = alpha * x[i] + y[i];
}

/* Reverse the bytes of a buffer in place: works for any dtype through void*. */
void reverse_bytes(void *data, int64_t nbytes)
{
    unsigned char *p = data;
    for (int64_t i = 0, j = nbytes - 1; i < j; i++, j--) {
        unsigned char t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

int add_ints(int a, int b) { return a + b; }

int noop(void) { return 0; }
