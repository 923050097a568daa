//! Prepared ("shared-weights") files: one copy of a tower's weights for every process.
//!
//! A backend that loads `X.onnx` the ordinary way holds its own copy of the weights, and
//! another copy in the layouts ONNX Runtime's kernels rearrange them into at load
//! ("prepacked"): eight connections, eight copies. `scripts/prepare_shared_weights.py` (run
//! by `scripts/models.sh` on the serving machine) optimises `X.onnx` offline at level all
//! and saves it as `X.shared.onnx` with its initializers, prepacked ones included
//! (`session.save_external_prepacked_constant_initializers`), in `X.shared.onnx.data`.
//! ONNX Runtime maps that data file instead of copying it, so every process's weights are
//! the same page-cache pages.
//!
//! The prepared files only fit the ONNX Runtime version that wrote them (its graph
//! rewrites and prepacked layouts are not a format) and the CPU it ran on (NCHWc blocks
//! of 8 floats with AVX2, 16 with AVX-512; kernels picked by CPU features). So a sidecar,
//! `X.shared.json`, records the version, this CPU's features, and the SHA-256 of the
//! `X.onnx` they were derived from; `choose` uses the prepared files only when all three
//! match the running process and the manifest, and otherwise says why it falls back to
//! the plain file.
//!
//! Files in the model directory must be replaced by rename, never rewritten in place: a
//! mapped file truncated under a running backend is SIGBUS in that backend.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Source;

/// The sidecar's format version: a sidecar of another format is not trusted.
pub const FORMAT: u32 = 1;

/// `X.onnx` -> `X.shared.json`.
pub fn sidecar_path(onnx: &Path) -> PathBuf {
    onnx.with_extension("shared.json")
}

/// What `scripts/prepare_shared_weights.py` writes next to `X.onnx`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub format: u32,
    /// `onnxruntime.__version__` of the ONNX Runtime that wrote the files.
    pub ort_version: String,
    /// `cpu_features()` of the machine that wrote them.
    pub cpu: String,
    /// File name of the source (`X.onnx`) and its SHA-256.
    pub source_onnx: String,
    pub source_sha256: String,
    /// The prepared graph and its data file, plain names in the same directory, with
    /// their sizes (a half-copied file is not used).
    pub onnx_file: String,
    pub onnx_bytes: u64,
    pub data_file: String,
    pub data_bytes: u64,
}

/// The running process, as far as the prepared files care.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub ort_version: String,
    pub cpu: String,
}

/// The prepared files to load instead of the plain ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The prepared graph: the file to give ONNX Runtime.
    pub onnx: Source,
    /// Its data file, which ONNX Runtime maps: the bytes every backend shares.
    pub data: Source,
    /// The sidecar: a new one (rewritten by models.sh) means the choice is made again.
    pub sidecar: Source,
}

/// Which file a tower is loaded from.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Prepared(Box<Prepared>),
    /// The plain ONNX file; `why` says why the prepared files were not used (`None`: there
    /// are none, or the setting is off: nothing to report).
    Plain {
        why: Option<String>,
    },
}

/// The CPU features that decide which kernels and layouts ONNX Runtime picks, from the
/// text of /proc/cpuinfo: the architecture, then the relevant flags present, sorted.
/// `scripts/prepare_shared_weights.py` computes the same string the same way.
pub fn cpu_features_from(cpuinfo: &str, arch: &str) -> String {
    const RELEVANT: &[&str] = &[
        // x86-64: MLAS dispatches on these (and NCHWc's block size follows avx512f).
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        // aarch64.
        "asimd",
        "asimddp",
        "asimdhp",
        "fphp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
    ];
    let flags = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "flags" | "Features").then_some(value)
        })
        .unwrap_or("");
    let mut present: Vec<&str> = flags.split_whitespace().filter(|f| RELEVANT.contains(f)).collect();
    present.sort_unstable();
    present.dedup();
    format!("{arch}:{}", present.join(","))
}

/// This machine's `cpu_features_from` (/proc/cpuinfo; just the architecture without it).
pub fn cpu_features() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpu_features_from(&cpuinfo, std::env::consts::ARCH)
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains("..")
}

/// Chooses the file to load for the plain ONNX file `onnx`, whose expected SHA-256 is
/// `source_sha256` (the manifest's, or the file's own). The prepared files are used when
/// the sidecar exists, parses, and matches this host, that SHA-256 and the files present.
pub fn choose(onnx: &Path, source_sha256: &str, host: &Host) -> Choice {
    let sidecar_file = sidecar_path(onnx);
    let Ok(sidecar_source) = Source::of(sidecar_file.clone()) else {
        return Choice::Plain { why: None };
    };
    let text = match std::fs::read_to_string(&sidecar_file) {
        Ok(t) => t,
        Err(e) => return Choice::Plain { why: Some(format!("cannot read {}: {e}", sidecar_file.display())) },
    };
    let sidecar: Sidecar = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return Choice::Plain { why: Some(format!("{} is not valid: {e}", sidecar_file.display())) },
    };
    match check(&sidecar, onnx, source_sha256, host) {
        Ok((prepared, data)) => Choice::Prepared(Box::new(Prepared { onnx: prepared, data, sidecar: sidecar_source })),
        Err(why) => Choice::Plain { why: Some(format!("{}: {why}", sidecar_file.display())) },
    }
}

fn check(s: &Sidecar, onnx: &Path, source_sha256: &str, host: &Host) -> Result<(Source, Source), String> {
    if s.format != FORMAT {
        return Err(format!("format {}, this pg_vision reads format {FORMAT}", s.format));
    }
    if s.ort_version != host.ort_version {
        return Err(format!("prepared by ONNX Runtime {}, this backend runs {}", s.ort_version, host.ort_version));
    }
    if s.cpu != host.cpu {
        return Err(format!("prepared on a CPU with \"{}\", this one has \"{}\"", s.cpu, host.cpu));
    }
    let source_name = onnx.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if s.source_onnx != source_name {
        return Err(format!("prepared from {}, not {source_name}", s.source_onnx));
    }
    if s.source_sha256 != source_sha256 {
        return Err(format!(
            "prepared from weights with sha256 {}..., the model's are {}...",
            s.source_sha256.get(..12).unwrap_or(&s.source_sha256),
            source_sha256.get(..12).unwrap_or(source_sha256)
        ));
    }
    let dir = onnx.parent().unwrap_or(Path::new("."));
    let mut sources = Vec::new();
    for (name, bytes) in [(&s.onnx_file, s.onnx_bytes), (&s.data_file, s.data_bytes)] {
        if !plain_name(name) {
            return Err(format!("\"{name}\" is not a plain file name"));
        }
        let source = Source::of(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if source.id.len != bytes {
            return Err(format!("{name} has {} bytes, the sidecar says {bytes}", source.id.len));
        }
        sources.push(source);
    }
    let data = sources.pop().expect("two");
    Ok((sources.pop().expect("two"), data))
}

/// Bytes of this process's mappings of the file `data` (matched by inode and path), from
/// /proc/self/smaps: what ONNX Runtime mapped of it, and the pages of those mappings this
/// process has written to (`Anonymous`: copies made on write, its own, never shared). Not
/// `Private_Dirty`: page-cache pages of a file written moments ago (models.sh has just
/// prepared it) are dirty until written back, and mapped by one process they show there,
/// though they are the file's shared pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mapped {
    pub size: u64,
    pub rss: u64,
    pub anonymous: u64,
}

/// `Mapped` for `data` from the text of an smaps file.
pub fn mapped_from(smaps: &str, data: &Source) -> Mapped {
    let mut out = Mapped::default();
    let mut inside = false;
    let path = data.path.to_string_lossy();
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode   path"; its fields follow
        // as "Name:   123 kB".
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let rest: Vec<&str> = fields.collect();
            let inode = rest.get(3).and_then(|i| i.parse::<u64>().ok());
            let mapped_path = rest.get(4..).map(|p| p.join(" ")).unwrap_or_default();
            inside = inode == Some(data.id.ino) && mapped_path == path;
            continue;
        }
        if !inside {
            continue;
        }
        let kb = |rest: Option<&str>| rest.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match first {
            "Size:" => out.size += kb(fields.next()),
            "Rss:" => out.rss += kb(fields.next()),
            "Anonymous:" => out.anonymous += kb(fields.next()),
            _ => {}
        }
    }
    out
}

/// `Mapped` for `data` in this process.
pub fn mapped(data: &Source) -> Mapped {
    std::fs::read_to_string("/proc/self/smaps").map_or_else(|_| Mapped::default(), |s| mapped_from(&s, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn host() -> Host {
        Host { ort_version: "1.32.0".into(), cpu: "x86_64:avx,avx2,fma".into() }
    }

    /// A model directory with `m.onnx`, its prepared files and a sidecar matching `host()`.
    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgv-prepared-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("m.onnx"), b"plain").unwrap();
        std::fs::write(d.join("m.shared.onnx"), b"graph").unwrap();
        std::fs::write(d.join("m.shared.onnx.data"), b"weights!").unwrap();
        write(&d, &sidecar());
        d
    }

    fn sidecar() -> Sidecar {
        Sidecar {
            format: FORMAT,
            ort_version: "1.32.0".into(),
            cpu: "x86_64:avx,avx2,fma".into(),
            source_onnx: "m.onnx".into(),
            source_sha256: SHA.into(),
            onnx_file: "m.shared.onnx".into(),
            onnx_bytes: 5,
            data_file: "m.shared.onnx.data".into(),
            data_bytes: 8,
        }
    }

    fn write(d: &Path, s: &Sidecar) {
        std::fs::write(d.join("m.shared.json"), serde_json::to_string(s).unwrap()).unwrap();
    }

    fn why(c: Choice) -> String {
        match c {
            Choice::Plain { why } => why.unwrap_or_default(),
            Choice::Prepared(p) => panic!("chose {p:?}"),
        }
    }

    #[test]
    fn a_matching_sidecar_chooses_the_prepared_files() {
        let d = dir("match");
        match choose(&d.join("m.onnx"), SHA, &host()) {
            Choice::Prepared(p) => {
                assert_eq!(p.onnx.path, d.join("m.shared.onnx"));
                assert_eq!(p.data.path, d.join("m.shared.onnx.data"));
                assert_eq!(p.data.id.len, 8);
                assert_eq!(p.sidecar.path, d.join("m.shared.json"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn any_mismatch_falls_back_to_the_plain_file_and_says_why() {
        let d = dir("mismatch");
        let onnx = d.join("m.onnx");
        // Another ONNX Runtime, another CPU, other weights: each named.
        let other = Host { ort_version: "1.33.0".into(), ..host() };
        assert!(why(choose(&onnx, SHA, &other)).contains("prepared by ONNX Runtime 1.32.0, this backend runs 1.33.0"));
        let avx512 = Host { cpu: "x86_64:avx,avx2,avx512f,fma".into(), ..host() };
        assert!(why(choose(&onnx, SHA, &avx512)).contains("prepared on a CPU with \"x86_64:avx,avx2,fma\""));
        let new_weights = "b".repeat(64);
        assert!(why(choose(&onnx, &new_weights, &host())).contains("the model's are bbbbbbbbbbbb..."));
        // Another source file, another format, a truncated data file, a path outside.
        for (edit, expect) in [
            (Sidecar { source_onnx: "n.onnx".into(), ..sidecar() }, "prepared from n.onnx, not m.onnx"),
            (Sidecar { format: FORMAT + 1, ..sidecar() }, "this pg_vision reads format"),
            (Sidecar { data_bytes: 9, ..sidecar() }, "m.shared.onnx.data has 8 bytes, the sidecar says 9"),
            (Sidecar { data_file: "../x".into(), ..sidecar() }, "is not a plain file name"),
        ] {
            write(&d, &edit);
            let w = why(choose(&onnx, SHA, &host()));
            assert!(w.contains(expect), "{w}");
            assert!(w.starts_with(&d.join("m.shared.json").display().to_string()), "{w}");
        }
        // A missing data file; a sidecar that does not parse.
        write(&d, &sidecar());
        std::fs::remove_file(d.join("m.shared.onnx.data")).unwrap();
        assert!(why(choose(&onnx, SHA, &host())).contains("m.shared.onnx.data: No such file"));
        std::fs::write(d.join("m.shared.json"), b"{").unwrap();
        assert!(why(choose(&onnx, SHA, &host())).contains("is not valid"));
        // No sidecar at all: the plain file, nothing to report.
        std::fs::remove_file(d.join("m.shared.json")).unwrap();
        assert_eq!(choose(&onnx, SHA, &host()), Choice::Plain { why: None });
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cpu_features_keep_the_relevant_flags_sorted() {
        let x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx fma sse4_1 aes avx512f\nflags\t: ignored\n";
        assert_eq!(cpu_features_from(x86, "x86_64"), "x86_64:avx,avx2,avx512f,fma,sse4_1,sse4_2");
        let arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\n";
        assert_eq!(cpu_features_from(arm, "aarch64"), "aarch64:asimd,asimddp,i8mm");
        assert_eq!(cpu_features_from("", "x86_64"), "x86_64:");
        assert!(cpu_features().starts_with(std::env::consts::ARCH));
    }

    #[test]
    fn mappings_of_the_data_file_are_summed() {
        let d = dir("smaps");
        let data = Source::of(d.join("m.shared.onnx.data")).unwrap();
        let p = data.path.display();
        let ino = data.id.ino;
        let smaps = format!(
            "7f00-7f10 rw-p 00000000 08:01 {ino}      {p}\nSize:  64 kB\nRss:  60 kB\nPrivate_Dirty:  60 kB\nAnonymous:  4 kB\n\
             7f10-7f20 r--p 00000000 08:01 {}   {p}\nSize:  1000 kB\nRss: 1000 kB\nAnonymous: 8 kB\n\
             7f20-7f30 rw-p 00010000 08:01 {ino}      {p}\nSize:  16 kB\nRss:  8 kB\nAnonymous:  0 kB\n\
             7f30-7f40 rw-p 00000000 00:00 0 \nSize:  500 kB\nRss:  500 kB\nAnonymous: 500 kB\n",
            ino + 1
        );
        assert_eq!(mapped_from(&smaps, &data), Mapped { size: 80 * 1024, rss: 68 * 1024, anonymous: 4 * 1024 });
        std::fs::remove_dir_all(&d).unwrap();
    }
}
