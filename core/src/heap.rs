//! How much memory a loaded model holds, measured rather than guessed.
//!
//! The measure is glibc's count of heap bytes in use (`mallinfo2`: `uordblks`, the bytes
//! handed out from every arena, plus `hblkhd`, the large blocks malloc maps with mmap)
//! taken before and after a load. ONNX Runtime keeps a model's weights, its optimised
//! graph and its planned buffers in malloc'd memory (its CPU allocator is malloc), so the
//! difference is what the model keeps once loading is over: temporaries freed during the
//! load are not counted. It does not count the ONNX Runtime library's code (file-backed
//! pages, shared by every backend), the environment created at a backend's first load
//! (the caller creates it before measuring), nor thread stacks (mmap'd by pthreads, only
//! touched pages are resident, a few KB each). A backend is single-threaded while it
//! loads, so nothing else allocates in between.

use std::time::{Duration, Instant};

/// Heap bytes in use in this process, all arenas.
pub fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads malloc's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// Resident set size of this process (VmRSS), for reports; `None` where /proc is absent.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Gives the free pages of every malloc arena back to the operating system. Loading a
/// model frees far more than it keeps (the parsed protobuf, graph copies made while
/// optimising); without this, glibc keeps those pages and the backend's resident size
/// stays well above what the budget counts.
pub fn release_free_pages() {
    // SAFETY: malloc_trim only walks malloc's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Runs `f` and returns its result, the heap bytes it left allocated, and its wall time;
/// then releases the pages it freed (`release_free_pages`).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, u64, Duration) {
    let before = heap_in_use();
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed();
    let kept = heap_in_use().saturating_sub(before);
    release_free_pages();
    (out, kept, elapsed)
}
