//! Pools that keep the side (a `k x k` window at stride 1 with `(k - 1) / 2` pixels of padding:
//! FeatEx's pool branch, `pool2a` and `pool3a`) on small planes, sixteen outputs of one plane at a
//! time in AVX-512 registers, the plane read where it lies.
//!
//! At stride 1 an output and its window's pixel `(dy, dx)` are a fixed distance apart in the
//! plane, `(dy - padding) * w + dx - padding`, so sixteen consecutive outputs read sixteen
//! consecutive pixels for each window position: one load, masked to the lanes whose pixel lies
//! inside the plane (a masked-off lane reads nothing, so the loads at the plane's edges touch no
//! memory outside it). The masks depend on the plane's geometry alone and are worked out once
//! for it (each thread keeps its last few geometries'). Each lane scans its window in the scalar
//! kernel's order with its compare (strictly greater, or NaN), starting from minus infinity with
//! the offset of its first pixel inside the plane, which gives the scalar kernel's maximum and
//! offset bit for bit: a first pixel of minus infinity is not replaced by itself and keeps the
//! offset it starts with, and any other value (a NaN too) takes over.
//!
//! The lanes (`lanes.rs`) and the two passes of three (`same.rs`) took 4-6 ns an output on the
//! 5x5 and 6x6 planes of FeatEx 3 at 48 px: interleaving eight planes and scattering their outputs
//! back, or handling a 5-pixel row's ends apart, cost more than the compares. Here nothing is
//! copied: about 1 ns an output there (see [`MAX_PLANE`] for the sides it takes).

use std::cell::RefCell;

use super::Pool2d;

/// The largest plane pooled here (32x32). Against the other kernels, 32 x 272 planes a call on
/// an Intel Xeon with AVX-512, alternating: 5.5 times as fast at 5x5, 2.2 at 11x11, 1.17 at 23x23,
/// 1.1 at 27x27, but 0.9 at 55x55, where the two passes of three (`same.rs`) vectorise their
/// long rows well.
const MAX_PLANE: usize = 1024;

/// Whether [`pool_planes`] takes `h x w` planes under `pool` on this CPU: AVX-512 in use, a
/// window that keeps the side at stride 1 (odd, padding half of it rounded down) with offsets
/// that fit a byte, and a plane of at most [`MAX_PLANE`] pixels.
pub(crate) fn applies(pool: Pool2d, (h, w): (usize, usize)) -> bool {
    keeps_the_side(pool)
        && h * w <= MAX_PLANE
        && h * w > 0
        && pool.records_offsets()
        && crate::isa::isa() >= crate::isa::Isa::Avx512
}

/// A window at stride 1 whose padding makes the output as large as the input, in either rounding.
fn keeps_the_side(pool: Pool2d) -> bool {
    pool.stride == 1 && pool.kernel % 2 == 1 && pool.padding * 2 + 1 == pool.kernel
}

/// Plane geometries whose masks a thread keeps ([`pool_planes`]).
const GEOMETRIES_KEPT: usize = 4;

/// Outputs a register holds.
const LANES: usize = 16;

/// The masks of one plane geometry: for each register of outputs and window position, the lanes
/// whose pixel there lies inside the plane; each lane's first such position (its offset to start
/// from); the lanes that are outputs at all (the last register's tail is not).
struct PlaneMasks {
    /// The planes' side and the window they are for.
    geometry: (usize, usize, Pool2d),
    /// `registers x kernel^2` lane masks, register by register.
    inside: Vec<u16>,
    /// `registers x 16` first offsets.
    first: Vec<u8>,
    /// One mask a register of the lanes that are outputs (so as many as there are registers).
    outputs: Vec<u16>,
    /// Distance in the plane from an output to each window position's pixel.
    steps: Vec<isize>,
}

impl PlaneMasks {
    fn new(h: usize, w: usize, pool: Pool2d) -> Self {
        let (plane, k, pad) = (h * w, pool.kernel, pool.padding as isize);
        let vectors = plane.div_ceil(LANES);
        let mut inside = vec![0u16; vectors * k * k];
        let mut first = vec![0u8; vectors * LANES];
        let mut outputs = vec![0u16; vectors];
        for output in 0..plane {
            let (vector, lane) = (output / LANES, output % LANES);
            outputs[vector] |= 1 << lane;
            let (y, x) = ((output / w) as isize, (output % w) as isize);
            let mut seen = false;
            for dy in 0..k {
                for dx in 0..k {
                    let (py, px) = (y + dy as isize - pad, x + dx as isize - pad);
                    if (0..h as isize).contains(&py) && (0..w as isize).contains(&px) {
                        inside[vector * k * k + dy * k + dx] |= 1 << lane;
                        if !seen {
                            first[vector * LANES + lane] = (dy * k + dx) as u8;
                            seen = true;
                        }
                    }
                }
            }
        }
        let steps = (0..k * k)
            .map(|at| ((at / k) as isize - pad) * w as isize + (at % k) as isize - pad)
            .collect();
        Self {
            geometry: (h, w, pool),
            inside,
            first,
            outputs,
            steps,
        }
    }
}

/// Pools each `h x w` plane of `planes` into `out` and `offsets` (`h x w` each; offsets
/// `row * kernel + column` within the window), values and offsets as the scalar kernel's. Only
/// where [`applies`] holds. A [`super::kernel::PlanesKernel`] (it needs no buffer).
pub(crate) fn pool_planes(
    planes: &[f32],
    (h, w, pool): (usize, usize, Pool2d),
    out: &mut [f32],
    offsets: &mut [u8],
    _buffer: &mut Vec<f32>,
) {
    assert!(
        applies(pool, (h, w)),
        "max_pool2d: {pool:?} on {h}x{w} planes is not for the plane-vector kernel"
    );
    let plane = h * w;
    let count = planes.len() / plane;
    assert!(
        out.len() >= count * plane && offsets.len() >= count * plane,
        "max_pool2d: outputs shorter than the planes"
    );
    // The masks of the last few geometries, kept by each thread: a pool's planes come a few at
    // a time (16 planes of 5x5 a task), and working the masks out again for each took longer
    // than the pooling; an inference alternates two geometries (pool2a's and pool3a's).
    thread_local! {
        static MASKS: RefCell<Vec<PlaneMasks>> = const { RefCell::new(Vec::new()) };
    }
    MASKS.with_borrow_mut(|kept| {
        let index = match kept.iter().position(|masks| masks.geometry == (h, w, pool)) {
            Some(index) => index,
            None => {
                if kept.len() == GEOMETRIES_KEPT {
                    kept.remove(0);
                }
                kept.push(PlaneMasks::new(h, w, pool));
                kept.len() - 1
            }
        };
        let masks = &kept[index];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `applies` checked that AVX-512 (F, VL, BW) is in use, so the CPU has it; the
        // asserts above keep every output register's unmasked lanes inside `out` and `offsets`,
        // and the masks, of this geometry, keep every load's lanes inside the plane it pools.
        unsafe {
            x86::pool_planes_avx512(&planes[..count * plane], plane, masks, out, offsets)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (masks, out, offsets);
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PlaneMasks, LANES};

    /// [`super::pool_planes`]'s loop over planes and registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, VL and BW; `out` and `offsets` must hold one value for each
    /// pixel of `planes`, and `masks` must be those of the planes' geometry.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw")]
    pub(super) unsafe fn pool_planes_avx512(
        planes: &[f32],
        plane: usize,
        masks: &PlaneMasks,
        out: &mut [f32],
        offsets: &mut [u8],
    ) {
        let positions = masks.steps.len();
        for (index, pixels) in planes.chunks_exact(plane).enumerate() {
            let base = pixels.as_ptr();
            let out = out.as_mut_ptr().add(index * plane);
            let offsets = offsets.as_mut_ptr().add(index * plane);
            for vector in 0..masks.outputs.len() {
                let start = vector * LANES;
                let inside = &masks.inside[vector * positions..][..positions];
                let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut offset = _mm_loadu_si128(masks.first.as_ptr().add(start).cast::<__m128i>());
                for (at, (&lanes, &step)) in inside.iter().zip(&masks.steps).enumerate() {
                    // The lanes' pixels lie inside this plane (the masks say so); the pointer
                    // itself may point outside it where a lane is masked off, and is only
                    // computed (wrapping), never read there.
                    let values =
                        _mm512_maskz_loadu_ps(lanes, base.wrapping_offset(start as isize + step));
                    // Strictly greater, or NaN: the scalar `replaces`.
                    let take = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes, values, best)
                        | _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(lanes, values, values);
                    best = _mm512_mask_mov_ps(best, take, values);
                    offset = _mm_mask_mov_epi8(offset, take, _mm_set1_epi8(at as i8));
                }
                let outputs = masks.outputs[vector];
                _mm512_mask_storeu_ps(out.add(start), outputs, best);
                _mm_mask_storeu_epi8(offsets.add(start).cast::<i8>(), outputs, offset);
            }
        }
    }
}
