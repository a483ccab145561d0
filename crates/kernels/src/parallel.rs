//! Threading and GEMM helpers shared by the fast CPU kernels.
//!
//! Threads come from rayon's global pool, so `RAYON_NUM_THREADS` is respected and every logical
//! CPU is used by default (the `gemm` crate on its own counts physical cores, which leaves one of
//! the two vCPUs of a small cloud machine idle).

/// How a GEMM may use threads: `gemm::Parallelism::None` inside a batch split across threads,
/// `Rayon(n)` when one image at a time uses every thread.
pub(crate) type Parallel = gemm::Parallelism;

/// Threads the kernels use: the size of rayon's pool.
pub(crate) fn thread_count() -> usize {
    rayon::current_num_threads().max(1)
}

/// A pointer that threads may share because each writes a disjoint part of its target (the users
/// say which part is whose).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);

// SAFETY: only used for disjoint writes, see `max_pool::pool_forward`,
// `fast_conv::forward_image` and `winograd_batch::ChannelPlanes`.
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// Each thread's spare working buffers, lent by [`with_spare_buffer`].
    static SPARE_BUFFERS: std::cell::RefCell<Vec<Vec<f32>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare buffers a thread keeps: enough for the buffers one kernel holds at a time.
const SPARE_BUFFERS_KEPT: usize = 4;

/// Runs `f` with one of this thread's spare buffers, empty or left over from an earlier call
/// (its values stale; size it with [`grown`]). Working buffers of a few MiB (an im2col matrix, one
/// image's convolution output) allocated and zeroed anew on every call cost about a tenth of an
/// inference at batch 1.
pub(crate) fn with_spare_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut buffer = SPARE_BUFFERS
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default();
    let result = f(&mut buffer);
    SPARE_BUFFERS.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS_KEPT {
            spare.push(buffer);
        }
    });
    result
}

/// The first `len` values of `buffer`, grown to fit but never shrunk: shrinking and growing again
/// would zero the regrown part on every call. The values are whatever the buffer held.
pub(crate) fn grown<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// Runs `f(state, (index, chunk))` on each `chunk`-long piece of `data`: on every thread when
/// `parallel` (each rayon job with its own `init()` state), else in order on the calling thread
/// with one state. Kernels that spread one image over the threads only below the thread count
/// take this choice at every step.
pub(crate) fn for_each_chunk_with<T: Send, S>(
    data: &mut [T],
    chunk: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, (usize, &mut [T])) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(init, f);
    } else {
        let mut state = init();
        for item in data.chunks_mut(chunk).enumerate() {
            f(&mut state, item);
        }
    }
}

/// Runs `f(state, index)` for each index in `0..count`: on every thread when `parallel` (each
/// rayon job with its own `init()` state), else in order on the calling thread with one state.
pub(crate) fn for_each_index_with<S>(
    count: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel {
        (0..count).into_par_iter().for_each_init(init, f);
    } else {
        let mut state = init();
        for index in 0..count {
            f(&mut state, index);
        }
    }
}

/// [`for_each_chunk_with`] without a per-thread state.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    for_each_chunk_with(data, chunk, parallel, || (), |_, item| f(item));
}

/// Splits a batch of `n` images across threads: images per group and the GEMM parallelism
/// inside a group. With at least one image per thread, each thread runs whole images with a
/// single-threaded GEMM (no synchronisation inside a layer); otherwise images run one after the
/// other and the GEMM uses every thread.
pub(crate) fn image_groups(n: usize) -> (usize, Parallel) {
    let threads = thread_count();
    if threads > 1 && n >= threads {
        (n.div_ceil(threads), gemm::Parallelism::None)
    } else if threads > 1 {
        (n.max(1), gemm::Parallelism::Rayon(threads))
    } else {
        (n.max(1), gemm::Parallelism::None)
    }
}

/// A row-major GEMM `dst (m x n, rows of n) = [dst +] lhs (m x k) * rhs (k x n)`, the operands
/// given by their row and column strides so transposes cost nothing.
pub(crate) struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: &'a mut [f32],
    pub accumulate: bool,
    pub lhs: &'a [f32],
    pub lhs_rs: usize,
    pub lhs_cs: usize,
    pub rhs: &'a [f32],
    pub rhs_rs: usize,
    pub rhs_cs: usize,
}

/// Runs a [`Gemm`], checking every access stays inside its slice.
pub(crate) fn gemm(op: Gemm<'_>, parallelism: Parallel) {
    let Gemm {
        m,
        n,
        k,
        dst,
        accumulate,
        lhs,
        lhs_rs,
        lhs_cs,
        rhs,
        rhs_rs,
        rhs_cs,
    } = op;
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        dst.len() >= m * n,
        "gemm: destination of {} values for {m} x {n}",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        lhs.len() > last(m, k, lhs_rs, lhs_cs),
        "gemm: lhs of {} values too short for {m} x {k}",
        lhs.len()
    );
    assert!(
        rhs.len() > last(k, n, rhs_rs, rhs_cs),
        "gemm: rhs of {} values too short for {k} x {n}",
        rhs.len()
    );
    // SAFETY: the asserts above keep every element the GEMM reads or writes inside its slice, and
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `f` on one of the pool's threads while every other thread of the pool waits for work
/// awake, taking any that `f` spreads out, instead of going to sleep between `f`'s parallel
/// steps. An inference at batch 1 spreads one image over the threads in about twenty steps of a
/// few hundred microseconds each; a sleeping thread takes tens of microseconds to wake (more in a
/// virtual machine), twice a step. The other threads spin for as long as `f` runs, so this is for
/// short calls only. Called from inside the pool, or with one thread, it just runs `f`.
pub(crate) fn with_threads_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Lets the waiting threads go when `f` returns or panics (else they would spin forever and
    /// the scope never end).
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    if rayon::current_thread_index().is_some() || thread_count() < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        // This runs on a pool thread, which then runs `f`: its own copy of the waiting job must
        // return at once, or it would wait on itself.
        let runner = rayon::current_thread_index();
        let done = &done;
        scope.spawn_broadcast(move |_, context| {
            if Some(context.index()) == runner {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let _release = Release(done);
        f()
    })
}

/// `vec![value; len]`, filled by every thread when it is large: the kernels' outputs are allocated
/// on the thread that calls the op, and filling several MiB there is a serial pass during which
/// the other threads wait (about 1 ms of an inference at batch 1).
pub(crate) fn filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    if len <= CHUNK {
        return vec![value; len];
    }
    par_build(len, CHUNK, value, |_, _| {})
}

/// A vector of `len` values built in parallel, `chunk` values at a time: each chunk is filled with
/// `fill` and then handed to `write(chunk index, chunk)` by the same thread, so a large output is
/// touched once, while in cache, by every thread (a `vec![fill; len]` first would be one more
/// single-threaded pass over all of it).
pub(crate) fn par_build<T: Copy + Send + Sync>(
    len: usize,
    chunk: usize,
    fill: T,
    write: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut values: Vec<T> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(chunk_idx, uninit)| {
            for value in uninit.iter_mut() {
                value.write(fill);
            }
            // SAFETY: every element of `uninit` was initialised just above, and `MaybeUninit<T>`
            // has the layout of `T`.
            let chunk_values =
                unsafe { &mut *(uninit as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            write(chunk_idx, chunk_values);
        });
    // SAFETY: the chunks above cover the first `len` elements and each was initialised.
    unsafe { values.set_len(len) };
    values
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::with_threads_awake;

    #[test]
    fn the_threads_kept_awake_run_the_work_and_let_go() {
        let sum = with_threads_awake(|| (0..10_000u64).into_par_iter().sum::<u64>());
        assert_eq!(sum, 10_000 * 9_999 / 2);
        // Nested inside the pool, and again after the first call ended.
        let nested = with_threads_awake(|| with_threads_awake(rayon::current_thread_index));
        assert!(nested.is_some() || rayon::current_num_threads() < 2);
        assert_eq!(with_threads_awake(|| 7), 7);
    }

    #[test]
    fn a_panic_inside_ends_the_wait_and_reaches_the_caller() {
        let outcome = std::panic::catch_unwind(|| {
            with_threads_awake(|| {
                (0..64)
                    .into_par_iter()
                    .for_each(|i| assert!(i < 63, "planted"));
            })
        });
        assert!(outcome.is_err());
        // The pool still works.
        assert_eq!(with_threads_awake(|| (0..4).into_par_iter().count()), 4);
    }
}
