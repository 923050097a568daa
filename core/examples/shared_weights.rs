//! One copy of a model's weights for every process: which ONNX Runtime loading mechanism
//! gives it, measured in separate processes, as PostgreSQL backends are.
//!
//!     .pgv/venv/bin/python scripts/prepare_shared_weights.py --study models/efficientnet-lite0.onnx   # once per model
//!     PG_VISION_ORT_LIB=/path/to/libonnxruntime.so \
//!       cargo run --release -p pg_vision_core --example shared_weights -- models/efficientnet-lite0.onnx \
//!       [--prep target/shared-weights] [--n 8] [--runs 100] [--threads 2] [--only today,optpp]
//!
//! For each variant (a way of loading the model: which file, read how, with which session
//! options) the study re-executes itself as child processes, each of which creates the ONNX
//! Runtime environment, builds one session the variant's way, runs one inference (an input
//! of the shape the session declares, batch 1: a 224x224 image, or 77 int64 token ids), hands
//! its freed heap pages back as pg_vision does after a load (`malloc_trim`), and then, when
//! the parent asks, reports its memory from /proc/self/smaps_rollup; it exits once the parent
//! has read every child. Children are started one after another (each loads while the
//! previous ones hold their model, as backends connecting one by one would) and measured
//! together, after the last one has loaded, so each one's PSS divides the pages they share
//! by the number of processes really sharing them.
//!
//! The baseline is the same children with only the ONNX Runtime environment (the library's
//! pages are shared by every process that loads it, and PSS divides them too), measured
//! alone and N at once. Per variant the parent prints:
//! - `1 proc`: the PSS of one child alone, minus the PSS of one baseline child alone (MB);
//! - `N procs`: the PSS of N children together, minus that of N baseline children together;
//! - `ratio`: the two's ratio (1.0 would be perfect sharing; N, no sharing at all);
//! - per child, with N: `private` bytes (Private_Clean + Private_Dirty), file-backed PSS
//!   (`file`: mapped model files) and `commit` (VmData: private writable mappings, charged
//!   against the commit limit under `vm.overcommit_memory = 2` even when their pages are
//!   shared), each above a baseline child's;
//! - `load ms`: how long the session took to build in the child alone (first run excluded);
//! - latency: one process holding one session of every variant, `--threads` intra-op threads
//!   each, 10 warm-up runs then `--runs` runs taken in turns (run i of every variant, then run
//!   i + 1), so that every variant meets the same load from the rest of the machine: p50, p90,
//!   `vs 1st` (the median of each run's ratio to the first variant's run of the same turn),
//!   and the largest difference between the variant's output and the first variant's.
//!
//! Variants whose file is missing from `--prep` are skipped with a note; `--latency-only`
//! skips the memory. Pure ONNX Runtime: no PostgreSQL, no decoding.
//!
//! Measured here (ONNX Runtime 1.32.0, 2 cores with AVX2, 8 processes; MB of PSS added by 8
//! processes, ratio to one process, latency against `today` in the same run):
//!
//! | model | today | .ort mmap, no prepacking | offline-optimised + external data + prepacked (`optpp`) |
//! |---|---|---|---|
//! | EfficientNet-Lite0 | 248 MB, 6.97 | 113 MB, 3.23, -2% | 112 MB, 3.32, -2% |
//! | ViT-B/32-sized image fixture | 2874 MB, 7.90 | 404 MB, 1.11, +30% | 409 MB, 1.13, -0% |
//! | ViT-B/32-sized text fixture | 2092 MB, 7.86 | 209 MB, 1.27, +30% | 216 MB, 1.28, -1% |

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{InMemorySession, Session};
use ort::value::{TensorElementType, TensorRef, ValueType};

/// How a variant hands the model to ONNX Runtime.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// No session: the ONNX Runtime environment alone (the baseline).
    Nothing,
    /// `commit_from_file`: ONNX Runtime reads the file itself.
    File,
    /// A read-only mmap of the file, given to `commit_from_memory_directly` (ORT format only:
    /// `session.use_ort_model_bytes_directly` and `..._for_initializers` are set by it). The
    /// mapping must outlive the session; here it is never unmapped.
    Mapped,
}

struct Variant {
    name: &'static str,
    /// Appended to the model's stem to name its file in `--prep`; "" is the model itself.
    suffix: &'static str,
    load: Load,
    level: GraphOptimizationLevel,
    config: &'static [(&'static str, &'static str)],
    what: &'static str,
}

const NO_PREPACK: (&str, &str) = ("session.disable_prepacking", "1");

fn variants() -> Vec<Variant> {
    use GraphOptimizationLevel::{All, Disable};
    let v = |name, suffix, load, level, config, what| Variant { name, suffix, load, level, config, what };
    vec![
        v("today", "", Load::File, All, &[], "1. commit_from_file(.onnx), pg_vision's options"),
        v("today-noprepack", "", Load::File, All, &[NO_PREPACK], "1 + session.disable_prepacking"),
        v(
            "ort-mmap",
            ".ort",
            Load::Mapped,
            All,
            &[],
            "2. .ort (Fixed, all, amd64 NCHWc), our mmap, bytes used directly",
        ),
        v("ort-mmap-noprepack", ".ort", Load::Mapped, All, &[NO_PREPACK], "3. = 2 + session.disable_prepacking"),
        v(
            "ort-file-mmap",
            ".ort",
            Load::File,
            All,
            &[("session.use_memory_mapped_ort_model", "1"), ("session.use_ort_model_bytes_for_initializers", "1")],
            "2b. .ort from its path, mmapped by ONNX Runtime 1.32 itself",
        ),
        v(
            "ort-portable-mmap-noprepack",
            ".portable.ort",
            Load::Mapped,
            All,
            &[NO_PREPACK],
            "3 with the portable .ort (converted without NCHWc)",
        ),
        v("ext", ".ext.onnx", Load::File, All, &[], "4. .onnx + external data (onnx package), from its path"),
        v("ext-noprepack", ".ext.onnx", Load::File, All, &[NO_PREPACK], "4 + session.disable_prepacking"),
        v(
            "opt",
            ".opt.onnx",
            Load::File,
            Disable,
            &[],
            "5. optimised offline (all), external data, loaded unoptimised",
        ),
        v(
            "optpp",
            ".optpp.onnx",
            Load::File,
            Disable,
            &[],
            "6. = 5 + prepacked weights saved in the data file (save_external_prepacked_...)",
        ),
        v("optpp-all", ".optpp.onnx", Load::File, All, &[], "6 loaded with pg_vision's level all instead"),
    ]
}

const BASELINE: Variant = Variant {
    name: "baseline",
    suffix: "",
    load: Load::Nothing,
    level: GraphOptimizationLevel::All,
    config: &[],
    what: "the ONNX Runtime environment alone",
};

fn variant(name: &str) -> Variant {
    if name == BASELINE.name {
        return BASELINE;
    }
    variants().into_iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no variant {name}"))
}

/// The file a variant loads for `model`.
fn file_of(v: &Variant, model: &Path, prep: &Path) -> PathBuf {
    if v.suffix.is_empty() {
        return model.to_path_buf();
    }
    let stem = model.file_stem().unwrap().to_str().unwrap();
    prep.join(format!("{stem}{}", v.suffix))
}

/// A session built one of two ways: `commit_from_memory_directly` gives a type of its own.
enum Loaded {
    File(Session),
    Mapped(InMemorySession<'static>),
}

/// The input a session declares, batch 1 where the batch is dynamic.
enum Input {
    F32(Vec<i64>, Vec<f32>),
    I64(Vec<i64>, Vec<i64>),
}

impl Loaded {
    fn session(&self) -> &Session {
        match self {
            Loaded::File(s) => s,
            Loaded::Mapped(s) => s,
        }
    }

    fn input(&self) -> (String, Input) {
        let outlet = &self.session().inputs()[0];
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else { panic!("input 0 is not a tensor") };
        let shape: Vec<i64> = shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let len = shape.iter().product::<i64>() as usize;
        let input = match ty {
            TensorElementType::Float32 => {
                Input::F32(shape, (0..len).map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0).collect())
            }
            // Token ids: start of text, four words, end of text (CLIP's 49406 .. 49407), padding.
            TensorElementType::Int64 => {
                let mut ids = vec![0i64; len];
                ids[..6].copy_from_slice(&[49406, 320, 1125, 539, 320, 49407]);
                Input::I64(shape, ids)
            }
            other => panic!("input type {other:?} is not handled"),
        };
        (outlet.name().to_owned(), input)
    }

    /// Runs once; returns the first output's values (f32).
    fn run(&mut self, name: &str, input: &Input) -> Vec<f32> {
        macro_rules! run {
            ($s:expr, $shape:expr, $data:expr) => {{
                let t = TensorRef::from_array_view(($shape.clone(), &$data[..])).unwrap();
                let outputs = $s.run(ort::inputs![name => t]).unwrap();
                outputs[0].try_extract_tensor::<f32>().unwrap().1.to_vec()
            }};
        }
        match (self, input) {
            (Loaded::File(s), Input::F32(shape, data)) => run!(s, shape, data),
            (Loaded::File(s), Input::I64(shape, data)) => run!(s, shape, data),
            (Loaded::Mapped(s), Input::F32(shape, data)) => run!(s, shape, data),
            (Loaded::Mapped(s), Input::I64(shape, data)) => run!(s, shape, data),
        }
    }
}

/// A read-only, never unmapped mapping of `path`: it must outlive every session built on it,
/// and these processes end without unmapping. (pg_vision would keep it with the session and
/// unmap it after the session is dropped.)
fn map_file(path: &Path) -> &'static [u8] {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().unwrap().len() as usize;
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only mapping of a whole regular file, never written through and
    // never unmapped; the file is not truncated while the process lives.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert!(p != libc::MAP_FAILED, "mmap {}: {}", path.display(), std::io::Error::last_os_error());
        std::slice::from_raw_parts(p as *const u8, len)
    }
}

fn build(v: &Variant, file: &Path, threads: usize) -> Option<Loaded> {
    let env = pg_vision_core::runtime::environment(Path::new(&std::env::var("PG_VISION_ORT_LIB").unwrap())).unwrap();
    if v.load == Load::Nothing {
        return None;
    }
    pg_vision_core::runtime::with_signals_blocked(|| {
        let mut b = Session::builder(env)
            .unwrap()
            .with_optimization_level(v.level)
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .with_inter_threads(1)
            .unwrap()
            .with_intra_op_spinning(false)
            .unwrap()
            .with_inter_op_spinning(false)
            .unwrap();
        for (key, value) in v.config {
            b = b.with_config_entry(key, value).unwrap();
        }
        let err = |e: ort::Error| format!("{}: {}: {e}", v.name, file.display());
        Some(match v.load {
            Load::File => Loaded::File(b.commit_from_file(file).map_err(err).unwrap()),
            Load::Mapped => Loaded::Mapped(b.commit_from_memory_directly(map_file(file)).map_err(err).unwrap()),
            Load::Nothing => unreachable!(),
        })
    })
}

/// Bytes from /proc/self/smaps_rollup, in the order of `FIELDS`, then `VmData` from
/// /proc/self/status: the private writable mappings, what Linux charges against its commit
/// limit (`vm.overcommit_memory = 2`, as PostgreSQL's documentation recommends) whether or
/// not their pages are resident or shared.
const FIELDS: [&str; 8] =
    ["Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty"];

fn kb_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map_or(0, |r| r.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024)
}

fn memory() -> Vec<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    FIELDS.iter().map(|f| kb_field(&rollup, f)).chain([kb_field(&status, "VmData")]).collect()
}

/// A child holding one session: loads, says "ready" and how long the session took to build
/// (ms, first inference excluded), reports its memory when the parent
/// writes a line, exits when the parent closes its stdin.
fn child(v: &Variant, file: &Path, threads: usize) {
    let start = Instant::now();
    let mut loaded = build(v, file, threads);
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    if let Some(l) = loaded.as_mut() {
        let (name, input) = l.input();
        l.run(&name, &input);
    }
    pg_vision_core::heap::release_free_pages();
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    println!("ready {load_ms}");
    stdin.read_line(&mut line).unwrap();
    let m: Vec<String> = memory().iter().map(u64::to_string).collect();
    println!("{}", m.join(" "));
    line.clear();
    stdin.read_line(&mut line).unwrap(); // EOF: the parent has read every child
    drop(loaded);
}

/// A child measuring latency: one session per `variant=file` argument, all in this one
/// process, run in turns (run i of every variant, then run i + 1, the starting variant
/// rotating), so that every variant meets the same load from other processes on the
/// machine. Prints, per variant: p50 and p90 in ms, the median of its runs' ratios to the
/// first variant's run of the same turn, and the largest difference between its output and
/// the first variant's.
fn latency_child(threads: usize, runs: usize, pairs: &[String]) {
    let mut sessions: Vec<(Loaded, String, Input)> = pairs
        .iter()
        .map(|p| {
            let (name, file) = p.split_once('=').unwrap();
            let l = build(&variant(name), Path::new(file), threads).unwrap();
            let (input_name, input) = l.input();
            (l, input_name, input)
        })
        .collect();
    let mut reference: Option<Vec<f32>> = None;
    let mut diffs = Vec::new();
    for (l, name, input) in &mut sessions {
        let out = l.run(name, input);
        let r = reference.get_or_insert_with(|| out.clone());
        assert_eq!(r.len(), out.len(), "outputs differ in length");
        diffs.push(r.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max));
        (0..9).for_each(|_| drop(l.run(name, input)));
    }
    let mut times = vec![Vec::with_capacity(runs); sessions.len()];
    for i in 0..runs {
        for k in 0..sessions.len() {
            let k = (k + i) % sessions.len();
            let (l, name, input) = &mut sessions[k];
            let start = Instant::now();
            std::hint::black_box(l.run(name, input));
            times[k].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Each run against the first variant's run of the same turn: the paired ratios cancel
    // most of the load other processes put on the machine meanwhile.
    let first = times[0].clone();
    for (t, d) in times.iter_mut().zip(diffs) {
        let mut ratios: Vec<f64> = t.iter().zip(&first).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        t.sort_by(f64::total_cmp);
        println!("{} {} {} {d}", t[(t.len() - 1) / 2], t[(t.len() - 1) * 9 / 10], ratios[(ratios.len() - 1) / 2]);
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn line(r: &mut BufReader<ChildStdout>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    assert!(!s.is_empty(), "a child ended early (see its stderr above)");
    s.trim().to_owned()
}

fn spawn(args: &[String]) -> Running {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    Running { child, stdin, stdout }
}

/// Starts `n` children of `v` one after another, each once the previous one is ready, then
/// has all of them read their memory; returns each one's figures (`memory`) and the first
/// one's load time (ms).
fn measure(v: &Variant, file: &Path, n: usize, threads: usize) -> (Vec<Vec<u64>>, f64) {
    let args = ["--child".into(), v.name.into(), file.display().to_string(), threads.to_string()];
    let mut running: Vec<Running> = Vec::new();
    let mut load_ms = 0.0;
    for i in 0..n {
        let mut r = spawn(&args);
        let ready = line(&mut r.stdout);
        let ms = ready.strip_prefix("ready ").unwrap_or_else(|| panic!("unexpected \"{ready}\" from a child"));
        if i == 0 {
            load_ms = ms.parse().unwrap();
        }
        running.push(r);
    }
    for r in &mut running {
        writeln!(r.stdin, "measure").unwrap();
    }
    let figures =
        running.iter_mut().map(|r| line(&mut r.stdout).split(' ').map(|x| x.parse().unwrap()).collect()).collect();
    for r in running {
        drop(r.stdin);
        r.child.wait_with_output().unwrap();
    }
    (figures, load_ms)
}

/// p50, p90, paired ratio to the first and output difference for each `(variant, file)`,
/// measured together.
fn latency(todo: &[(&Variant, PathBuf)], threads: usize, runs: usize) -> Vec<(f64, f64, f64, f64)> {
    let mut args = vec!["--latency".to_owned(), threads.to_string(), runs.to_string()];
    args.extend(todo.iter().map(|(v, f)| format!("{}={}", v.name, f.display())));
    let mut r = spawn(&args);
    drop(r.stdin);
    let out = todo
        .iter()
        .map(|_| {
            let l = line(&mut r.stdout);
            let mut it = l.split(' ').map(|x| x.parse().unwrap());
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    r.child.wait().unwrap();
    out
}

const MB: f64 = 1e6;

fn sum(figures: &[Vec<u64>], field: usize) -> f64 {
    figures.iter().map(|f| f[field] as f64).sum()
}

struct Row<'v> {
    v: &'v Variant,
    file: PathBuf,
    size: f64,
    memory: Option<(f64, f64, f64, f64, f64, f64)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => return child(&variant(&args[2]), Path::new(&args[3]), args[4].parse().unwrap()),
        Some("--latency") => return latency_child(args[2].parse().unwrap(), args[3].parse().unwrap(), &args[4..]),
        _ => {}
    }
    let mut model = None;
    let (mut prep, mut n, mut runs, mut threads) = (PathBuf::from("target/shared-weights"), 8, 100, 2);
    let (mut only, mut memory) = (None, true);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value")).clone();
        match a.as_str() {
            "--prep" => prep = PathBuf::from(value()),
            "--n" => n = value().parse().unwrap(),
            "--runs" => runs = value().parse().unwrap(),
            "--threads" => threads = value().parse().unwrap(),
            "--only" => only = Some(value().split(',').map(str::to_owned).collect::<Vec<_>>()),
            "--latency-only" => memory = false,
            _ => model = Some(PathBuf::from(a)),
        }
    }
    let model = model.unwrap_or_else(|| PathBuf::from("models/efficientnet-lite0.onnx"));
    let all_variants = variants();
    let mut rows = Vec::new();
    for v in &all_variants {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == v.name)) {
            continue;
        }
        let file = file_of(v, &model, &prep);
        if !file.exists() {
            println!(
                "{:<28} skipped: no {} (scripts/prepare_shared_weights.py --study makes it)",
                v.name,
                file.display()
            );
            continue;
        }
        let data = PathBuf::from(format!("{}.data", file.display()));
        let size = (std::fs::metadata(&file).unwrap().len() + std::fs::metadata(&data).map_or(0, |m| m.len())) as f64;
        rows.push(Row { v, file, size, memory: None });
    }

    let (base1, base_n) = if memory {
        (measure(&BASELINE, &model, 1, threads).0, measure(&BASELINE, &model, n, threads).0)
    } else {
        (Vec::new(), Vec::new())
    };
    let (b1, bn) = (sum(&base1, 1), sum(&base_n, 1));
    let per_proc = |f: &[Vec<u64>], fields: &[usize]| fields.iter().map(|&i| sum(f, i)).sum::<f64>() / f.len() as f64;
    for row in rows.iter_mut().filter(|_| memory) {
        eprintln!("measuring the memory of {} ...", row.v.name);
        let (one, load_ms) = measure(row.v, &row.file, 1, threads);
        let (all, _) = measure(row.v, &row.file, n, threads);
        row.memory = Some((
            (sum(&one, 1) - b1) / MB,
            (sum(&all, 1) - bn) / MB,
            (per_proc(&all, &[6, 7]) - per_proc(&base_n, &[6, 7])) / MB,
            (per_proc(&all, &[3]) - per_proc(&base_n, &[3])) / MB,
            (per_proc(&all, &[8]) - per_proc(&base_n, &[8])) / MB,
            load_ms,
        ));
    }
    eprintln!("measuring latency ...");
    let todo: Vec<(&Variant, PathBuf)> = rows.iter().map(|r| (r.v, r.file.clone())).collect();
    let times = latency(&todo, threads, runs);

    let baseline = if memory {
        format!("baseline ({}): PSS {:.1} MB alone, {:.1} MB for {n}", BASELINE.what, b1 / MB, bn / MB)
    } else {
        "memory not measured".to_owned()
    };
    println!(
        "{} | {n} processes | {baseline} | latency: {threads} intra-op threads, {runs} runs, all variants in turns in one process",
        model.display()
    );
    println!(
        "{:<28} {:>7} | {:>7} {:>7} {:>5} | {:>7} {:>7} {:>7} | {:>7} | {:>7} {:>7} {:>6} {:>7}",
        "variant",
        "file MB",
        "1 proc",
        "N procs",
        "ratio",
        "private",
        "file",
        "commit",
        "load ms",
        "p50 ms",
        "p90 ms",
        "vs 1st",
        "max diff"
    );
    for (row, (p50, p90, ratio, diff)) in rows.iter().zip(&times) {
        let vs = (ratio - 1.0) * 100.0;
        let mem = row.memory.map_or_else(
            || format!("{:>7} {:>7} {:>5} | {:>7} {:>7} {:>7} | {:>7}", "-", "-", "-", "-", "-", "-", "-"),
            |(one, all, private, file, commit, load)| {
                format!(
                    "{one:>7.1} {all:>7.1} {:>5.2} | {private:>7.1} {file:>7.1} {commit:>7.1} | {load:>7.0}",
                    all / one
                )
            },
        );
        println!("{:<28} {:>7.1} | {mem} | {p50:>7.2} {p90:>7.2} {vs:>+5.0}% {diff:>7.1e}", row.v.name, row.size / MB);
    }
    println!("\nMB. PSS increase of one process alone and of N together (ratio N/1); per process, with N: private");
    println!("bytes, file-backed PSS and commit charge (VmData), each above a baseline process's. load ms: the");
    println!("session build of one process alone (first inference excluded). vs 1st: the");
    println!("median of each run's ratio to the first variant's run of the same turn. max diff: the largest");
    println!("difference between the variant's output and the first variant's.\nvariants:");
    for v in &all_variants {
        println!("  {:<28} {}", v.name, v.what);
    }
}
