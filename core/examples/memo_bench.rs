//! What a memo lookup costs, for uploads of several sizes, p50 over repeated runs: the
//! SHA-256 that keys a new input (`memo::key`), and recognising the last input again by
//! comparing it with the memo's copy (`Memo::key`, what each row of a generic plan does).
//!
//! `cargo run --release -p pg_vision_core --example memo_bench`

use std::time::Instant;

use pg_vision_core::memo::{self, Limits, Memo};

const RUNS: usize = 50;

fn p50_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn main() {
    let limits = Limits { entries: 128, bytes: 64 << 20 };
    println!("{:>10} {:>12} {:>10} {:>16}", "bytes", "sha256 ms", "GB/s", "same again ms");
    for size in [100 << 10, 1 << 20, 5 << 20, 20 << 20] {
        // Not all zeros, not one repeated byte: a realistic stream for the hash.
        let input: Vec<u8> = (0..size).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let hash = p50_ms(|| {
            std::hint::black_box(memo::key("efficientnet|context", &input));
        });
        let mut m = Memo::default();
        m.key("efficientnet|context", &input, limits);
        let again = p50_ms(|| {
            std::hint::black_box(m.key("efficientnet|context", &input, limits));
        });
        println!("{size:>10} {hash:>12.3} {:>10.2} {again:>16.3}", size as f64 / hash / 1e6);
    }
}
