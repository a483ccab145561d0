//! The tile-position GEMMs of one image's F(4x4, 3x3) convolution where the image has few tiles
//! (9 for conv2b at 11x11, 48 px; 36 at 23x23, 96 px): each position's GEMM (`M = U V`, `c_out x
//! c_in` times `c_in x tiles`) is then only as wide as the tiles, where the `gemm` crate runs at a
//! fraction of its rate: it packs the `c_out x c_in` weights again on every call to use them a
//! handful of times, and its six-column micro-kernel wastes the columns a narrow GEMM leaves
//! empty. One thread, 96 to 208 channels, 36 positions: 9 tiles took 177 us here against `gemm`'s
//! 292, 4 tiles 76 against 249, 36 tiles the same (776 against 772; AMD EPYC Zen 3, caches warm).
//!
//! The transformed weights are packed once ([`pack`], remembered by the [`crate::WeightCache`]
//! with the transform) into panels of [`PANEL`] output channels, each a run of `c_in` rows of
//! [`PANEL`] values; a GEMM streams each panel once per group of up to [`TILES_AT_ONCE`] tiles,
//! broadcasting each tile's value of an input channel against the panel's row, the sums held in
//! registers over the whole run.
//!
//! With AVX-512 a panel is one register, and a pass takes two panels and up to twelve tiles
//! (batch-1 forwards alternating with the AVX2 passes on an Intel Xeon: 1.07-1.09 times as fast
//! at 48 px, 1.19 at 96 px).
//!
//! Every output value is one sum over the input channels in order, each step a fused
//! multiply-add (`u * v + sum`, rounded once), starting from zero: the AVX-512 and AVX2 paths and
//! the portable one ([`f32::mul_add`]) give the same bits on any CPU. (It is also how `gemm`'s
//! micro-kernels sum, and on the AMD EPYC both gave the same bits; nothing here relies on that.)

use super::isa::{isa, Isa};

/// Output channels in one register.
const LANES: usize = 8;

/// Output channels in one panel of packed weights: two registers, so that each broadcast value
/// feeds two multiply-adds and a pass has enough independent sums to keep the FMA units busy
/// (panels of one register took 272 against 177 us for 9 tiles: too few sums in flight to hide
/// the multiply-add's latency).
pub(super) const PANEL: usize = 2 * LANES;

/// Most tiles whose sums one pass over a panel keeps in registers: twelve accumulators (two
/// registers a tile), the panel's two rows and the broadcast value fill fifteen of AVX2's sixteen
/// registers.
const TILES_AT_ONCE: usize = 6;

/// `u` (`positions x c_out x c_in`, as [`super::winograd::transform_weights_with`] writes it)
/// packed into panels: for each position, for each group of [`PANEL`] output channels, `c_in`
/// rows of their [`PANEL`] weights (zeros past `c_out`).
pub(super) fn pack(u: &[f32], (c_in, c_out, positions): (usize, usize, usize)) -> Vec<f32> {
    let panels = c_out.div_ceil(PANEL);
    let mut packed = vec![0f32; positions * panels * c_in * PANEL];
    for (position, packed) in packed.chunks_exact_mut(panels * c_in * PANEL).enumerate() {
        let u = &u[position * c_out * c_in..][..c_out * c_in];
        for (panel, packed) in packed.chunks_exact_mut(c_in * PANEL).enumerate() {
            for lane in 0..PANEL.min(c_out - panel * PANEL) {
                let row = &u[(panel * PANEL + lane) * c_in..][..c_in];
                for (k, &value) in row.iter().enumerate() {
                    packed[k * PANEL + lane] = value;
                }
            }
        }
    }
    packed
}

/// `M = U[position] V` with `U` packed by [`pack`] and row `k` of `V` (input channel `k`'s
/// `tiles` values) at `v[k * row_stride..]`, into `m` in panels: for each panel of [`PANEL`]
/// output channels, for each tile, the panel's [`PANEL`] values (`c_out.div_ceil(PANEL) x tiles x
/// PANEL`, zeros past `c_out`), so that each tile's sums are stored whole. The GEMM of one tile
/// position.
pub(super) fn position_products(
    packed: &[f32],
    position: usize,
    (v, row_stride): (&[f32], usize),
    m: &mut [f32],
    (c_in, c_out, tiles): (usize, usize, usize),
) {
    let panels = c_out.div_ceil(PANEL);
    let packed = &packed[position * panels * c_in * PANEL..][..panels * c_in * PANEL];
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx512 {
        let m = &mut m[..panels * tiles * PANEL];
        assert!(c_in == 0 || v.len() >= (c_in - 1) * row_stride + tiles);
        // SAFETY: the CPU has AVX-512 F (`isa()` reports no level the CPU lacks); `packed` holds
        // `panels` panels of `c_in` rows, `v` the rows' `tiles` values (asserted above) and `m`
        // `panels x tiles` sums of a panel each (sliced above).
        return unsafe {
            x86::position_products_avx512(packed, (v, row_stride), m, (c_in, panels, tiles))
        };
    }
    let panel_products = m.chunks_exact_mut(tiles * PANEL);
    for (panel, m) in packed.chunks_exact(c_in * PANEL).zip(panel_products) {
        for (first, count) in tile_groups(tiles, TILES_AT_ONCE) {
            let v = &v[first..];
            let m = &mut m[first * PANEL..][..count * PANEL];
            macro_rules! by_count {
                ($($count:literal)*) => {
                    match count {
                        $($count => m.copy_from_slice(
                            panel_sums::<$count>(panel, v, row_stride, c_in).as_flattened(),
                        ),)*
                        count => unreachable!("{count} tiles at once"),
                    }
                };
            }
            by_count!(1 2 3 4 5 6);
        }
    }
}

/// The tiles `0..tiles` in near-equal groups of at most `most`, as `(first, count)` (9 as 5 and
/// 4 for 6 at most), so that no pass runs with a register or two of work.
fn tile_groups(tiles: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let groups = tiles.div_ceil(most).max(1);
    (0..groups).scan(0, move |first, group| {
        let count = (tiles - *first) / (groups - group);
        let start = *first;
        *first += count;
        Some((start, count))
    })
}

/// Values in one position's products ([`position_products`]): whole panels.
pub(super) fn products_len(c_out: usize, tiles: usize) -> usize {
    c_out.div_ceil(PANEL) * PANEL * tiles
}

/// Where [`position_products`] puts output channel `channel`'s first tile, and how far apart
/// its tiles lie.
#[cfg(test)]
fn products_place(channel: usize, tiles: usize) -> (usize, usize) {
    ((channel / PANEL) * tiles * PANEL + channel % PANEL, PANEL)
}

/// The sums of `COUNT` tiles against one panel: for each tile `t`, lane `l`, the sum over `k` of
/// `panel[k][l] * v[k * row_stride + t]`, in order of `k`, each step fused.
fn panel_sums<const COUNT: usize>(
    panel: &[f32],
    v: &[f32],
    row_stride: usize,
    c_in: usize,
) -> [[f32; PANEL]; COUNT] {
    assert!(panel.len() >= c_in * PANEL);
    assert!(c_in == 0 || v.len() >= (c_in - 1) * row_stride + COUNT);
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (`isa()` reports no level the CPU lacks, and its AVX2
        // level includes FMA); the reads stay in `panel` and `v` (asserted above).
        return unsafe { x86::panel_sums_avx2::<COUNT>(panel, v, row_stride, c_in) };
    }
    let mut sums = [[0f32; PANEL]; COUNT];
    for k in 0..c_in {
        let weights = &panel[k * PANEL..][..PANEL];
        let values = &v[k * row_stride..][..COUNT];
        for (sums, &value) in sums.iter_mut().zip(values) {
            for (sum, &weight) in sums.iter_mut().zip(weights) {
                *sum = weight.mul_add(value, *sum);
            }
        }
    }
    sums
}

/// Most tiles whose sums one pass keeps in AVX-512 registers, for two panels at once: 24
/// accumulators, the two panels' rows and the broadcast value in 27 of the 32 registers. Two
/// panels a pass, because one register a tile leaves the few tiles of a small plane (4 at 5x5)
/// too few sums in flight to hide the multiply-add's latency.
#[cfg(target_arch = "x86_64")]
const TILES_AT_ONCE_AVX512: usize = 12;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{tile_groups, LANES, PANEL, TILES_AT_ONCE_AVX512};

    /// [`super::position_products`] in AVX-512 registers: a panel is one register, and each pass
    /// takes two panels (the last alone when their count is odd) and up to
    /// [`TILES_AT_ONCE_AVX512`] tiles, each sum as the other paths make it.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `packed` must hold `panels` panels of `c_in` rows of
    /// [`PANEL`] values, `v` `(c_in - 1) * row_stride + tiles` values and `m`
    /// `panels * tiles * PANEL`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn position_products_avx512(
        packed: &[f32],
        (v, row_stride): (&[f32], usize),
        m: &mut [f32],
        (c_in, panels, tiles): (usize, usize, usize),
    ) {
        let panel_len = c_in * PANEL;
        let mut panel = 0;
        while panel < panels {
            let pair = panels - panel >= 2;
            for (first, count) in tile_groups(tiles, TILES_AT_ONCE_AVX512) {
                let arguments = Sums {
                    panel: packed.as_ptr().add(panel * panel_len),
                    panel_len,
                    v: v.as_ptr().add(first),
                    row_stride,
                    c_in,
                    out: m.as_mut_ptr().add(panel * tiles * PANEL + first * PANEL),
                    out_panel_stride: tiles * PANEL,
                };
                macro_rules! by_count {
                    ($($count:literal)*) => {
                        match (pair, count) {
                            $((true, $count) => sums_avx512::<2, $count>(arguments),
                              (false, $count) => sums_avx512::<1, $count>(arguments),)*
                            (_, count) => unreachable!("{count} tiles at once"),
                        }
                    };
                }
                by_count!(1 2 3 4 5 6 7 8 9 10 11 12);
            }
            panel += if pair { 2 } else { 1 };
        }
    }

    /// Where one pass of [`sums_avx512`] reads and writes.
    #[derive(Clone, Copy)]
    struct Sums {
        /// The first panel's rows (a second panel follows `panel_len` values on).
        panel: *const f32,
        panel_len: usize,
        /// The first tile's value of input channel 0 (channel `k`'s `k * row_stride` on).
        v: *const f32,
        row_stride: usize,
        c_in: usize,
        /// The first panel's first tile's sums (the second panel's `out_panel_stride` on).
        out: *mut f32,
        out_panel_stride: usize,
    }

    /// The sums of `COUNT` tiles against `PANELS` panels: for each panel, tile `t` and lane `l`,
    /// the sum over `k` of `panel[k][l] * v[k * row_stride + t]`, in order of `k`, each step
    /// fused, stored at the tile's place in the panel's products.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `arguments` must point at `PANELS` panels of `c_in` rows,
    /// the `COUNT` values of each of `c_in` rows of `v` and `PANELS` runs of `COUNT * PANEL`
    /// writable sums.
    #[inline]
    #[target_feature(enable = "avx512f")]
    // Each broadcast value feeds every panel's sum of its tile: indices say that most plainly.
    #[allow(clippy::needless_range_loop)]
    unsafe fn sums_avx512<const PANELS: usize, const COUNT: usize>(arguments: Sums) {
        let Sums {
            panel,
            panel_len,
            v,
            row_stride,
            c_in,
            out,
            out_panel_stride,
        } = arguments;
        let mut sums = [[_mm512_setzero_ps(); COUNT]; PANELS];
        for k in 0..c_in {
            let weights: [__m512; PANELS] =
                std::array::from_fn(|p| _mm512_loadu_ps(panel.add(p * panel_len + k * PANEL)));
            let values = v.add(k * row_stride);
            for t in 0..COUNT {
                let value = _mm512_set1_ps(*values.add(t));
                for p in 0..PANELS {
                    sums[p][t] = _mm512_fmadd_ps(weights[p], value, sums[p][t]);
                }
            }
        }
        for (p, sums) in sums.iter().enumerate() {
            for (t, sum) in sums.iter().enumerate() {
                _mm512_storeu_ps(out.add(p * out_panel_stride + t * PANEL), *sum);
            }
        }
    }

    /// [`super::panel_sums`] in AVX2 registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `panel` must hold `c_in * PANEL` values and `v`
    /// `(c_in - 1) * row_stride + COUNT`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_sums_avx2<const COUNT: usize>(
        panel: &[f32],
        v: &[f32],
        row_stride: usize,
        c_in: usize,
    ) -> [[f32; PANEL]; COUNT] {
        let mut low = [_mm256_setzero_ps(); COUNT];
        let mut high = [_mm256_setzero_ps(); COUNT];
        let (panel, v) = (panel.as_ptr(), v.as_ptr());
        for k in 0..c_in {
            // SAFETY: row `k` of the panel and values `k * row_stride ..+ COUNT` of `v` are in
            // bounds (the caller's promise).
            let (weights_low, weights_high, values) = unsafe {
                let row = panel.add(k * PANEL);
                let weights = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(LANES)));
                (weights.0, weights.1, v.add(k * row_stride))
            };
            for t in 0..COUNT {
                let value = unsafe { _mm256_broadcast_ss(&*values.add(t)) };
                low[t] = _mm256_fmadd_ps(weights_low, value, low[t]);
                high[t] = _mm256_fmadd_ps(weights_high, value, high[t]);
            }
        }
        std::array::from_fn(|t| {
            let mut out = [0f32; PANEL];
            // SAFETY: `out` holds two registers' floats.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), low[t]);
                _mm256_storeu_ps(out.as_mut_ptr().add(LANES), high[t]);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{pack, position_products, products_len, products_place};
    use crate::isa::for_each_supported;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| {
                let x = i
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503));
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn packed_products_are_the_fused_sums_on_every_path() {
        // Output channels not a whole number of panels (13, 3), tiles not a whole number of
        // groups (1, 4, 9, 13, 49), one input channel.
        for (c_in, c_out, tiles) in [
            (5, 13, 9),
            (1, 3, 4),
            (7, 16, 1),
            (4, 9, 13),
            (3, 8, 49),
            (2, 40, 7),
            (6, 64, 12),
            (3, 48, 24),
            (2, 33, 36),
        ] {
            let positions = 36;
            let u = values(positions * c_out * c_in, 1);
            let v = values(c_in * positions * tiles, 2);
            let packed = pack(&u, (c_in, c_out, positions));
            let expected: Vec<f32> = (0..positions)
                .flat_map(|p| {
                    let (u, v) = (&u, &v);
                    (0..c_out).flat_map(move |o| {
                        (0..tiles).map(move |t| {
                            (0..c_in).fold(0f32, |sum, k| {
                                let weight = u[(p * c_out + o) * c_in + k];
                                weight.mul_add(v[k * positions * tiles + p * tiles + t], sum)
                            })
                        })
                    })
                })
                .collect();
            for_each_supported(|level| {
                let len = products_len(c_out, tiles);
                let mut m = vec![f32::NAN; positions * len];
                for (p, m) in m.chunks_exact_mut(len).enumerate() {
                    let v = (&v[p * tiles..], positions * tiles);
                    position_products(&packed, p, v, m, (c_in, c_out, tiles));
                }
                for (i, expected) in expected.iter().enumerate() {
                    let (p, o, t) = (i / (c_out * tiles), i / tiles % c_out, i % tiles);
                    let (first, step) = products_place(o, tiles);
                    let got = m[p * len + first + t * step];
                    assert!(
                        got.to_bits() == expected.to_bits(),
                        "{level}: c_in {c_in}, c_out {c_out}, {tiles} tiles: {got} for {expected}"
                    );
                }
                // The panels' padding is zero.
                for (i, value) in m.iter().enumerate() {
                    let lane = i % len / tiles / 16 * 16 + i % 16;
                    assert!(lane < c_out || *value == 0.0, "padding {i}: {value}");
                }
            });
        }
    }
}
