//! ONNX Runtime session options, measured: what each does to one inference's latency, and
//! what it costs when several backends run at once on the same cores.
//!
//!     PG_VISION_ORT_LIB=/path/to/libonnxruntime.so \
//!       cargo run --release -p pg_vision_core --example session_bench -- models/efficientnet-lite0.onnx [threads] [backends]
//!
//! For each variant (pg_vision's options, then one change at a time): p50/p90 of a run of
//! one 224x224 input in one session with `threads` intra-op threads (default 2); then
//! `backends` sessions (default 8) with the same threads, each in a thread of its own
//! running back to back for a few seconds, as that many connections would:
//! total runs per second and their p50. Pure ONNX Runtime, no decoding, no PostgreSQL.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::TensorRef;

const RUNS: usize = 200;
const LOAD_SECONDS: u64 = 6;

type Variant = (&'static str, fn(SessionBuilder) -> SessionBuilder);

fn variants() -> Vec<Variant> {
    vec![
        ("pg_vision (opt all, no spinning)", |b| b),
        ("+ intra-op spinning", |b| b.with_intra_op_spinning(true).unwrap()),
        ("+ flush denormals to zero", |b| b.with_flush_to_zero().unwrap()),
        ("+ dynamic block base 4", |b| b.with_dynamic_block_base(4).unwrap()),
        ("+ thread affinity (cores 1,2)", |b| b.with_config_entry("session.intra_op_thread_affinities", "2").unwrap()),
        ("+ no memory pattern", |b| b.with_memory_pattern(false).unwrap()),
        ("opt extended instead of all", |b| b.with_optimization_level(GraphOptimizationLevel::Level2).unwrap()),
        ("opt basic instead of all", |b| b.with_optimization_level(GraphOptimizationLevel::Level1).unwrap()),
    ]
}

fn session(onnx: &Path, threads: usize, variant: &Variant) -> Session {
    let env = pg_vision_core::runtime::environment(Path::new(&std::env::var("PG_VISION_ORT_LIB").unwrap())).unwrap();
    let b = Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .with_inter_op_spinning(false)
        .unwrap();
    (variant.1)(b).commit_from_file(onnx).unwrap()
}

fn run(s: &mut Session, input: &[f32]) {
    let name = s.inputs()[0].name().to_owned();
    let t = TensorRef::from_array_view(([1usize, 3, 224, 224], input)).unwrap();
    std::hint::black_box(s.run(ort::inputs![name => t]).unwrap());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn latency(onnx: &Path, threads: usize, v: &Variant, input: &[f32]) -> (f64, f64) {
    let mut s = session(onnx, threads, v);
    (0..20).for_each(|_| run(&mut s, input));
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run(&mut s, input);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (percentile(&t, 0.5), percentile(&t, 0.9))
}

fn under_load(onnx: &Path, threads: usize, backends: usize, v: &Variant, input: &[f32]) -> (f64, f64) {
    let barrier = Arc::new(Barrier::new(backends));
    let handles: Vec<_> = (0..backends)
        .map(|_| {
            let (onnx, barrier, input, v) = (onnx.to_path_buf(), barrier.clone(), input.to_vec(), *v);
            std::thread::spawn(move || {
                let mut s = session(&onnx, threads, &v);
                run(&mut s, &input);
                barrier.wait();
                let end = Instant::now() + Duration::from_secs(LOAD_SECONDS);
                let mut times = Vec::new();
                while Instant::now() < end {
                    let start = Instant::now();
                    run(&mut s, &input);
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
                times
            })
        })
        .collect();
    let mut all: Vec<f64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / LOAD_SECONDS as f64, percentile(&all, 0.5))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let onnx = Path::new(args.get(1).map_or("models/efficientnet-lite0.onnx", String::as_str)).to_path_buf();
    let threads: usize = args.get(2).map_or(2, |a| a.parse().unwrap());
    let backends: usize = args.get(3).map_or(8, |a| a.parse().unwrap());
    let input: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0).collect();
    println!(
        "{} | one session, {threads} thread(s) | {backends} such sessions at once, {LOAD_SECONDS} s",
        onnx.display()
    );
    println!("{:<36} {:>8} {:>8} | {:>8} {:>8}", "variant", "p50 ms", "p90 ms", "runs/s", "p50 ms");
    for v in variants() {
        let (p50, p90) = latency(&onnx, threads, &v, &input);
        let (rate, load_p50) = under_load(&onnx, threads, backends, &v, &input);
        println!("{:<36} {p50:>8.2} {p90:>8.2} | {rate:>8.1} {load_p50:>8.1}", v.0);
    }
}
