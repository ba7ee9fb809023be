//! A software prefetch hint. The apply loop looks a few events ahead and asks for the cache
//! lines it will need (index entries, then account records), so that the random memory accesses
//! of a batch overlap instead of stalling one after another. A hint only: it cannot change a
//! result, and on other architectures it compiles to nothing.

#[inline(always)]
pub(crate) fn prefetch_read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let pointer = (value as *const T).cast::<i8>();
        // SAFETY: prefetch never faults and reads nothing architecturally; the pointer comes
        // from a live reference.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(pointer)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
