//! The heap measurement (`heap.rs`) in a process of its own: it reads the whole
//! process's heap, so tests of other modules running in parallel threads would show in it.

use pg_vision_core::heap::{measure, release_free_pages, rss_bytes};

/// The heap is the process's: these tests measure it, so they must not run at once.
static HEAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn counts_what_stays_allocated_not_what_was_freed() {
    let _alone = HEAP.lock().unwrap_or_else(|e| e.into_inner());
    let (kept, bytes, _) = measure(|| {
        drop(vec![1u8; 32 << 20]); // a temporary: freed before the end
        vec![1u8; 8 << 20]
    });
    assert_eq!(kept.len(), 8 << 20);
    let mb = bytes as f64 / (1 << 20) as f64;
    assert!((7.9..8.5).contains(&mb), "measured {mb} MB for an 8 MB allocation");
    assert!(rss_bytes().unwrap() > 8 << 20);
}

#[test]
fn freed_heap_pages_go_back_to_the_system() {
    let _alone = HEAP.lock().unwrap_or_else(|e| e.into_inner());
    // 200 MB in 4 KB blocks (from the heap, not mmap), pinned below a live block so
    // free() cannot shrink the heap top by itself: only malloc_trim returns them.
    let blocks: Vec<Vec<u8>> = (0..51_200).map(|i| vec![i as u8 | 1; 4096]).collect();
    let pin = Box::new([7u8; 64]); // on the heap, above the blocks
    drop(blocks);
    let before = rss_bytes().unwrap();
    release_free_pages();
    let after = rss_bytes().unwrap();
    assert!(before.saturating_sub(after) > 100 << 20, "RSS {} MB -> {} MB", before >> 20, after >> 20);
    assert_eq!(pin[0], 7);
}
