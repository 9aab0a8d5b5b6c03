/* Element-wise vector addition, c = a + b, for several element types.
 * Integer sums wrap around on overflow, as numpy's do. */
#include <stdint.h>

#define VADD(name, type)                                                   \
    void name(const type *a, const type *b, type *c, int64_t n)            \
    {                                                                      \
        for (int64_t i = 0; i < n; i++)                                    \
            c[i] = (type)(a[i] + b[i]);                                    \
    }

VADD(vadd_f32, float)
VADD(vadd_f64, double)
VADD(vadd_i32, int32_t)
VADD(vadd_i8, int8_t)
VADD(vadd_u16, uint16_t)
