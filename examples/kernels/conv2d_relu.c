/* One layer of a small CNN: 2-D convolution (stride 1, no padding) plus bias, then ReLU.
 *
 * input  [channels_in][height][width]
 * weight [channels_out][channels_in][kernel][kernel]
 * bias   [channels_out]
 * output [channels_out][height - kernel + 1][width - kernel + 1]
 */
#include <stdint.h>

void conv2d_relu_f32(const float *input, const float *weight, const float *bias, float *output,
                     int64_t channels_in, int64_t height, int64_t width, int64_t channels_out, int64_t kernel)
{
    const int64_t out_h = height - kernel + 1, out_w = width - kernel + 1;
    for (int64_t co = 0; co < channels_out; co++) {
        for (int64_t y = 0; y < out_h; y++) {
            for (int64_t x = 0; x < out_w; x++) {
                float sum = bias[co];
                for (int64_t ci = 0; ci < channels_in; ci++) {
                    const float *plane = input + ci * height * width;
                    const float *taps = weight + (co * channels_in + ci) * kernel * kernel;
                    for (int64_t ky = 0; ky < kernel; ky++)
                        for (int64_t kx = 0; kx < kernel; kx++)
                            sum += plane[(y + ky) * width + (x + kx)] * taps[ky * kernel + kx];
                }
                output[(co * out_h + y) * out_w + x] = sum > 0.0f ? sum : 0.0f;
            }
        }
    }
}
