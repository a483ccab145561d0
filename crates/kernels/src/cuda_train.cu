// CUDA kernels of the training step's element-wise parts (see cuda_train.rs, which launches
// them): dropout from a counter-based generator, and Adam's update of one parameter.
//
// Compiled to PTX by build.rs (nvcc --ptx --fmad=false, CUDA_COMPUTE_CAP) with the `cuda`
// feature. Both reproduce the CPU's arithmetic bit for bit: dropout's generator is the integer
// function of dropout.rs, and Adam's update the f32 operations of candle's tensor ops in
// crates/model/src/optim.rs, in the same order (no contraction into FMAs; IEEE sqrt and division,
// nvcc's defaults).

#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Dropout (dropout.rs): element i of call (seed, step) is kept when the top 24 bits of
// mix(mix(seed ^ mix(step)) + i) are at least `threshold` (= ceil(p * 2^24)); a kept element is
// multiplied by `scale` (= 1 / (1 - p) in f32), a dropped one by 0 (so a NaN stays NaN, as with a
// mask multiplied in). The backward is the same kernel on the gradient.

// SplitMix64's finaliser: a bijection of 64-bit words that mixes every input bit into every
// output bit.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void dropout_f32(const float *src, float *dst, uint64_t len, uint64_t key,
                                       uint32_t threshold, float scale) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < len;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t bits = (uint32_t)(mix64(key + i) >> 40);
        const float factor = bits >= threshold ? scale : 0.0f;
        dst[i] = __fmul_rn(src[i], factor);
    }
}

// ---------------------------------------------------------------------------------------------
// Adam (adam.rs; crates/model/src/optim.rs calls it), one parameter, in the f32 operations
// candle's tensor ops make of it (each `tensor * f64` is candle's affine `x * mul + add` with both
// constants rounded to f32, hence the explicit `+ 0`, which turns -0 into +0 as the CPU does):
//   m = m * beta1 + g * (1 - beta1)
//   v = v * beta2 + (g * g) * (1 - beta2)
//   denom = sqrt(v) * (1 / sqrt(bias_correction2)) + eps
//   param = param - (m / denom) * step_size
// The new parameter, first and second moments go to `out` (3 x len, in that order) rather than
// over the inputs: candle lends a tensor's device memory for reading only.
extern "C" __global__ void adam_f32(const float *param, const float *m, const float *v,
                                    const float *grad, float *out, uint64_t len, float beta1,
                                    float one_minus_beta1, float beta2, float one_minus_beta2,
                                    float inv_sqrt_bias_correction2, float eps, float step_size) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < len;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float m1 = __fadd_rn(__fadd_rn(__fmul_rn(m[i], beta1), 0.0f),
                                   __fadd_rn(__fmul_rn(g, one_minus_beta1), 0.0f));
        const float v1 =
            __fadd_rn(__fadd_rn(__fmul_rn(v[i], beta2), 0.0f),
                      __fadd_rn(__fmul_rn(__fmul_rn(g, g), one_minus_beta2), 0.0f));
        const float root = __fadd_rn(__fmul_rn(__fsqrt_rn(v1), inv_sqrt_bias_correction2), 0.0f);
        const float denom = __fadd_rn(__fmul_rn(root, 1.0f), eps);
        const float update = __fadd_rn(__fmul_rn(__fdiv_rn(m1, denom), step_size), 0.0f);
        out[i] = __fsub_rn(param[i], update);
        out[len + i] = m1;
        out[2 * len + i] = v1;
    }
}
