//! What a memo lookup costs: the SHA-256 of uploads of several sizes (the key of
//! `pg_vision_core::memo`), p50 over repeated runs, and the throughput it implies.
//!
//! `cargo run --release -p pg_vision_core --example memo_bench`

use std::time::Instant;

use pg_vision_core::memo;

fn main() {
    const RUNS: usize = 50;
    println!("{:>10} {:>12} {:>10}", "bytes", "p50 ms", "GB/s");
    for size in [100 << 10, 1 << 20, 5 << 20, 20 << 20] {
        // Not all zeros, not one repeated byte: a realistic stream for the hash.
        let input: Vec<u8> = (0..size).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(memo::key("efficientnet|context", &input));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let p50 = times[RUNS / 2];
        println!("{size:>10} {p50:>12.3} {:>10.2}", size as f64 / p50 / 1e6);
    }
}
