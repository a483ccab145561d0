//! Which x86-64 vector extensions the fast kernels use, decided at run time.
//!
//! Each kernel with a vector path is compiled several times from one body (`#[target_feature]`
//! copies of an `#[inline(always)]` function, or hand-written intrinsics), and this module picks
//! the widest that the CPU has: AVX-512, AVX2 with FMA, or the portable build that runs anywhere.
//! The binary itself targets baseline x86-64, so one build serves every CPU. The copies compute
//! the same operations in the same order, so they agree bit for bit (the tests check every path
//! that the machine at hand can run); only the width of the registers differs.
//!
//! [`set_isa_limit`] (or `DEXPRESSION_ISA=portable|avx2|avx512`) caps the choice, for tests and
//! for measuring what each extension is worth. It cannot raise it above what the CPU has.

use std::sync::atomic::{AtomicU8, Ordering};

/// A level of x86-64 vector extensions that the kernels have a path for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No extension beyond the target's baseline (SSE2 on x86-64); also every other architecture.
    Portable,
    /// AVX2 and FMA: 256-bit registers (x86-64-v3).
    Avx2,
    /// AVX-512 F, VL, BW and DQ: 512-bit registers (x86-64-v4).
    Avx512,
}

/// The environment variable that [`crate::KernelSettings::from_env`] reads to cap the extensions
/// used (`portable`, `avx2` or `avx512`).
pub const ISA_ENV: &str = "DEXPRESSION_ISA";

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The widest level this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The name used by [`ISA_ENV`] and in benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a [`Self::name`].
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0: not decided yet; otherwise 1 + the index in [`Isa::ALL`] of the level in use.
static IN_USE: AtomicU8 = AtomicU8::new(0);

/// Caps the extensions that the kernels use from now on, in every thread: `None` lifts the cap
/// (the CPU's widest level), `Some(level)` uses at most `level`. Returns the level now in use.
pub fn set_isa_limit(limit: Option<Isa>) -> Isa {
    let detected = Isa::detected();
    let level = limit.map_or(detected, |limit| limit.min(detected));
    let index = Isa::ALL.iter().position(|&isa| isa == level).unwrap_or(0);
    IN_USE.store(index as u8 + 1, Ordering::Relaxed);
    level
}

/// The level the kernels use: the CPU's widest, capped by [`set_isa_limit`].
#[inline]
pub fn isa() -> Isa {
    match IN_USE.load(Ordering::Relaxed) {
        0 => set_isa_limit(None),
        index => Isa::ALL[usize::from(index - 1).min(Isa::ALL.len() - 1)],
    }
}

/// Runs `kernel` compiled for the level in use ([`isa`]): the closure is inlined into a function
/// compiled with that level's extensions, so the loops of an `#[inline(always)]` kernel body that
/// it calls are vectorised that wide. Callers mark the closure `#[inline(always)]`: a closure
/// left out of line (it has three call sites, one per level) is compiled for the baseline only.
/// One body, one result: the copies differ only in register width, since the compiler neither reorders float sums nor fuses multiply-adds on its own.
#[inline]
pub(crate) fn vectorised<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: `isa()` returns a level only when the CPU has all of its extensions.
        Isa::Avx512 => return unsafe { x86::avx512(kernel) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::avx2(kernel) },
        Isa::Portable => {}
    }
    kernel()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU must have AVX-512 F, VL, BW and DQ.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub(super) unsafe fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }
}

/// Runs `f` at each level that this CPU supports, narrowest first, then returns to the default
/// (the CPU's widest level). For tests that compare the paths: one such test
/// runs at a time, and since the level is global, tests running beside it see other paths, which
/// is harmless because every path computes the same values.
#[cfg(test)]
pub(crate) fn for_each_supported(mut f: impl FnMut(Isa)) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for level in Isa::ALL
        .into_iter()
        .filter(|&level| level <= Isa::detected())
    {
        set_isa_limit(Some(level));
        f(level);
    }
    IN_USE.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_limit_never_exceeds_the_cpu() {
        for level in Isa::ALL {
            assert_eq!(Isa::from_name(level.name()), Some(level));
        }
        assert_eq!(Isa::from_name(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("sse9"), None);
        for_each_supported(|level| assert_eq!(isa(), level));
        let mut seen = Vec::new();
        for_each_supported(|level| seen.push(level));
        assert_eq!(seen.first(), Some(&Isa::Portable));
        assert_eq!(seen.last(), Some(&Isa::detected()));
    }
}
