// CUDA kernels for the custom ops of crates/model/src/ops (see cuda.rs, which launches them).
//
// Compiled to PTX by build.rs (nvcc --ptx, CUDA_COMPUTE_CAP) when the `cuda` feature is on.
// Every kernel reproduces the CPU kernel's arithmetic: the same compares, the same f32 roundings
// (explicit __fmul_rn/__fadd_rn, so nvcc cannot contract them into FMAs), and sums added in the
// CPU's order where the CPU's order is fixed. Only the LayerNorm statistics, summed in f64, are
// added in another order (a tree per sample); they agree with the CPU to f64 rounding.

#include <stdint.h>

// No window offset: the window holds only padding (NO_OFFSET in max_pool.rs).
#define NO_OFFSET 255

// ---------------------------------------------------------------------------------------------
// Max pooling with padding (max_pool.rs): first maximum in scan order, a NaN always takes over.

// Pools `src` (N x C x H x W) into `dst` (N x C x OH x OW), recording each window's maximum as
// `row * kernel + column` in the window (padding counted) in `offsets`, laid out as `dst`. One
// thread per output.
template <typename T>
__device__ void max_pool_forward(const T *src, T *dst, uint8_t *offsets, int n, int c, int h,
                                 int w, int oh, int ow, int kernel, int stride, int padding) {
    const long long total = (long long)n * c * oh * ow;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ox = (int)(i % ow);
        const int oy = (int)((i / ow) % oh);
        const long long plane = i / ((long long)oh * ow);  // image * c + channel
        const T *in = src + plane * h * w;
        const int y0 = max(oy * stride - padding, 0);
        const int y1 = min(oy * stride - padding + kernel, h);
        const int x0 = max(ox * stride - padding, 0);
        const int x1 = min(ox * stride - padding + kernel, w);
        if (y0 >= y1 || x0 >= x1) {
            dst[i] = -INFINITY;
            offsets[i] = NO_OFFSET;
            continue;
        }
        T best = in[y0 * w + x0];
        int best_offset = (y0 - oy * stride + padding) * kernel + (x0 - ox * stride + padding);
        for (int y = y0; y < y1; ++y) {
            for (int x = x0; x < x1; ++x) {
                const T value = in[y * w + x];
                // Strictly greater, or NaN: `replaces` in max_pool.rs.
                if (value > best || value != value) {
                    best = value;
                    best_offset = (y - oy * stride + padding) * kernel + (x - ox * stride + padding);
                }
            }
        }
        dst[i] = best;
        offsets[i] = (uint8_t)best_offset;
    }
}

// The input gradient (N x C x H x W) from the output gradient `grad_out` (N x C x OH x OW) and
// the recorded offsets. One thread per input element gathers the outputs whose recorded maximum
// it is, in the CPU scatter's order (output rows, then columns), so the sums are the CPU's bit
// for bit, without atomics.
template <typename T>
__device__ void max_pool_backward(const T *grad_out, const uint8_t *offsets, T *grad_in, int n,
                                  int c, int h, int w, int oh, int ow, int kernel, int stride,
                                  int padding) {
    const long long total = (long long)n * c * h * w;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int x = (int)(i % w);
        const int y = (int)((i / w) % h);
        const long long plane = i / ((long long)h * w);
        const T *g = grad_out + plane * oh * ow;
        const uint8_t *o = offsets + plane * oh * ow;
        // Outputs whose window holds row y: oy * stride - padding <= y < that + kernel.
        const int yp = y + padding, xp = x + padding;
        const int oy0 = yp >= kernel ? (yp - kernel) / stride + 1 : 0;
        const int oy1 = min(yp / stride, oh - 1);
        const int ox0 = xp >= kernel ? (xp - kernel) / stride + 1 : 0;
        const int ox1 = min(xp / stride, ow - 1);
        T sum = 0;
        for (int oy = oy0; oy <= oy1; ++oy) {
            for (int ox = ox0; ox <= ox1; ++ox) {
                const int offset = o[oy * ow + ox];
                if (offset != NO_OFFSET && oy * stride + offset / kernel == yp &&
                    ox * stride + offset % kernel == xp) {
                    sum += g[oy * ow + ox];
                }
            }
        }
        grad_in[i] = sum;
    }
}

#define MAX_POOL(T, SUFFIX)                                                                      \
    extern "C" __global__ void max_pool_forward_##SUFFIX(const T *src, T *dst, uint8_t *offsets, \
                                                         int n, int c, int h, int w, int oh,     \
                                                         int ow, int kernel, int stride,         \
                                                         int padding) {                          \
        max_pool_forward<T>(src, dst, offsets, n, c, h, w, oh, ow, kernel, stride, padding);     \
    }                                                                                            \
    extern "C" __global__ void max_pool_backward_##SUFFIX(                                      \
        const T *grad_out, const uint8_t *offsets, T *grad_in, int n, int c, int h, int w,       \
        int oh, int ow, int kernel, int stride, int padding) {                                   \
        max_pool_backward<T>(grad_out, offsets, grad_in, n, c, h, w, oh, ow, kernel, stride,     \
                             padding);                                                           \
    }

MAX_POOL(float, f32)
MAX_POOL(double, f64)

// ---------------------------------------------------------------------------------------------
// LayerNorm over every non-batch dimension (fast_layer_norm.rs): f32 data, f64 statistics.

// Threads per block of the per-sample reductions (a power of two).
#define REDUCE_THREADS 1024

// The block-wide sum of each thread's `value`, in a fixed tree order; every thread gets it.
__device__ double block_sum(double value, double *shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int step = REDUCE_THREADS / 2; step > 0; step /= 2) {
        if (threadIdx.x < step) shared[threadIdx.x] += shared[threadIdx.x + step];
        __syncthreads();
    }
    const double sum = shared[0];
    __syncthreads();
    return sum;
}

// Per sample (one block each): `stats[2 * s] = mean`, `stats[2 * s + 1] = sqrt(var + eps)`, the
// biased variance of two passes, as `sample_statistics`.
extern "C" __global__ void layer_norm_statistics(const float *x, double *stats, int features,
                                                 double eps) {
    __shared__ double shared[REDUCE_THREADS];
    const float *sample = x + (long long)blockIdx.x * features;
    double sum = 0;
    for (int j = threadIdx.x; j < features; j += REDUCE_THREADS) sum += (double)sample[j];
    const double mean = block_sum(sum, shared) / features;
    double squares = 0;
    for (int j = threadIdx.x; j < features; j += REDUCE_THREADS) {
        const double centred = (double)sample[j] - mean;
        squares += centred * centred;
    }
    const double variance = block_sum(squares, shared) / features;
    if (threadIdx.x == 0) {
        stats[2 * blockIdx.x] = mean;
        stats[2 * blockIdx.x + 1] = sqrt(variance + eps);
    }
}

// `out = (x * scale + shift) * weight + bias` with `pytorch_scale_shift`'s f32 scale and shift,
// one f32 operation at a time (ties in the next max-pool depend on this rounding).
extern "C" __global__ void layer_norm_forward(const float *x, const double *stats,
                                              const float *weight, const float *bias, float *out,
                                              long long total, int features, double eps) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long sample = i / features;
        const int j = (int)(i % features);
        const double std = stats[2 * sample + 1];
        const float variance = (float)(std * std - eps);
        const float mean = (float)stats[2 * sample];
        const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, (float)eps)));
        const float shift = __fmul_rn(-scale, mean);
        out[i] = __fadd_rn(__fmul_rn(__fadd_rn(__fmul_rn(x[i], scale), shift), weight[j]), bias[j]);
    }
}

// Per sample (one block each): the means of `g = dy * w` and of `g * xhat` over the sample, in
// f64 (`gradient_sums`), into `means[2 * s]` and `means[2 * s + 1]`.
extern "C" __global__ void layer_norm_gradient_means(const float *x, const float *grad,
                                                     const float *weight, const double *stats,
                                                     double *means, int features) {
    __shared__ double shared[REDUCE_THREADS];
    const long long base = (long long)blockIdx.x * features;
    const double mean = stats[2 * blockIdx.x];
    const double inv_std = 1.0 / stats[2 * blockIdx.x + 1];
    double sum_g = 0, sum_g_xhat = 0;
    for (int j = threadIdx.x; j < features; j += REDUCE_THREADS) {
        const double g = (double)__fmul_rn(grad[base + j], weight[j]);
        sum_g += g;
        sum_g_xhat += g * (((double)x[base + j] - mean) * inv_std);
    }
    const double total_g = block_sum(sum_g, shared);
    const double total_g_xhat = block_sum(sum_g_xhat, shared);
    if (threadIdx.x == 0) {
        means[2 * blockIdx.x] = total_g / features;
        means[2 * blockIdx.x + 1] = total_g_xhat / features;
    }
}

// The input gradient (`input_grad_part`) into `dx`, one thread per element.
extern "C" __global__ void layer_norm_input_grad(const float *x, const float *grad,
                                                 const float *weight, const double *stats,
                                                 const double *means, float *dx, long long total,
                                                 int features) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long sample = i / features;
        const int j = (int)(i % features);
        const double inv_std = 1.0 / stats[2 * sample + 1];
        const double xhat = ((double)x[i] - stats[2 * sample]) * inv_std;
        const double g = (double)__fmul_rn(grad[i], weight[j]);
        dx[i] = (float)((g - means[2 * sample] - xhat * means[2 * sample + 1]) * inv_std);
    }
}

// The weight gradients, then the bias gradients, into `affine` (2 x features), one thread per
// feature, summed over the samples in order in f32 as the CPU does: `dw += dy * xhat`, `db += dy`.
extern "C" __global__ void layer_norm_affine_grad(const float *x, const float *grad,
                                                  const double *stats, float *affine, int n,
                                                  int features) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < features;
         j += gridDim.x * blockDim.x) {
        float w = 0, b = 0;
        for (int s = 0; s < n; ++s) {
            const long long i = (long long)s * features + j;
            const double inv_std = 1.0 / stats[2 * s + 1];
            const float xhat = (float)(((double)x[i] - stats[2 * s]) * inv_std);
            w = __fadd_rn(w, __fmul_rn(grad[i], xhat));
            b = __fadd_rn(b, grad[i]);
        }
        affine[j] = w;
        affine[features + j] = b;
    }
}

// Local response normalisation across channels (lrn.rs), with the CPU kernel's f32 operations in
// its order: the window's squares summed in channel order, `sum / size * alpha + k`, the power
// (0.75 as two square roots), then the division; one thread per value.
__device__ float lrn_power(float d, float beta) {
    if (beta == 0.75f) {
        const float root = __fsqrt_rn(d);
        return __fmul_rn(root, __fsqrt_rn(root));
    }
    if (beta == 0.5f) return __fsqrt_rn(d);
    if (beta == 1.0f) return d;
    return powf(d, beta);
}

// The divisor's base `k + alpha * mean square` of the window of value `i` (`before` channels
// before it, `after` after, clipped at the image's channels).
__device__ float lrn_base(const float *x, long long i, int channels, long long plane, int before,
                          int after, float size, float alpha, float k) {
    const long long image = i / (channels * plane);
    const int c = (int)((i / plane) % channels);
    const long long p = i % plane;
    const int first = c - before < 0 ? 0 : c - before;
    const int last = c + after > channels - 1 ? channels - 1 : c + after;
    const float *base = x + image * channels * plane + p;
    float sum = 0.0f;
    for (int source = first; source <= last; ++source) {
        const float v = base[source * plane];
        sum = __fadd_rn(sum, __fmul_rn(v, v));
    }
    return __fadd_rn(__fmul_rn(__fdiv_rn(sum, size), alpha), k);
}

extern "C" __global__ void lrn_forward(const float *x, float *out, long long total, int channels,
                                       long long plane, int before, int after, float size,
                                       float alpha, float beta, float k) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const float base = lrn_base(x, i, channels, plane, before, after, size, alpha, k);
        out[i] = __fdiv_rn(x[i], lrn_power(base, beta));
    }
}

// Backward, pass 1: `dx = g / d^beta` and each value's share `g x / (d^beta d)` of the windows
// that hold it.
extern "C" __global__ void lrn_backward_terms(const float *x, const float *grad, float *dx,
                                              float *terms, long long total, int channels,
                                              long long plane, int before, int after, float size,
                                              float alpha, float beta, float k) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const float base = lrn_base(x, i, channels, plane, before, after, size, alpha, k);
        const float scale = lrn_power(base, beta);
        dx[i] = __fdiv_rn(grad[i], scale);
        terms[i] = __fdiv_rn(__fmul_rn(grad[i], x[i]), __fmul_rn(scale, base));
    }
}

// Backward, pass 2: `dx_j -= 2 alpha beta / size * x_j * sum of the terms of the channels whose
// window holds j` (from `j - after` to `j + before`).
extern "C" __global__ void lrn_backward_cross(const float *x, const float *terms, float *dx,
                                              long long total, int channels, long long plane,
                                              int before, int after, float coefficient) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long image = i / (channels * plane);
        const int j = (int)((i / plane) % channels);
        const long long p = i % plane;
        const int first = j - after < 0 ? 0 : j - after;
        const int last = j + before > channels - 1 ? channels - 1 : j + before;
        const float *base = terms + image * channels * plane + p;
        float sum = 0.0f;
        for (int c = first; c <= last; ++c) sum = __fadd_rn(sum, base[c * plane]);
        dx[i] = __fsub_rn(dx[i], __fmul_rn(__fmul_rn(coefficient, x[i]), sum));
    }
}
