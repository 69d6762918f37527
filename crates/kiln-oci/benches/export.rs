//! Layer export throughput: kiln's one-pass `write_layer` (tar → sha256 → compress → sha256 →
//! store) against GNU tar piped into the gzip and zstd CLIs, over the same 512 MiB file tree.
//!
//! Run: `cargo bench -p kiln-oci --bench export` (about a minute on 2 cores).
//! `KILN_BENCH_MIB` changes the data size; `KILN_BENCH_DIR` the scratch directory;
//! `KILN_BENCH_KEEP=1` keeps the generated tree.
//!
//! Each kiln mode runs in a fresh child process of this binary so its peak RSS (VmHWM) is its
//! own. kiln writes real blobs into a store (with fsync); the CLI pipelines write to /dev/null
//! (through the compressor, or `cat` for plain tar: GNU tar skips reading files when it sees
//! its output is /dev/null).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kiln_oci::layer::{self, LayerWriter, TarEntry};
use kiln_oci::{Compression, Store};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], Path::new(&args[3]), Path::new(&args[4]));
        return;
    }
    let mib: u64 = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = base.join(format!("kiln-oci-export-bench-{}", std::process::id()));
    let tree = scratch.join("tree");
    let t = Instant::now();
    let (files, bytes) = generate_tree(&tree, mib * MIB);
    println!(
        "data: {files} files, {:.0} MiB of content in {} ({:.1} s to generate)",
        bytes as f64 / MIB as f64,
        tree.display(),
        t.elapsed().as_secs_f64()
    );
    warm_cache(&tree);

    println!();
    println!(
        "{:<8} {:>10} {:>9} {:>10} {:>12} {:>10}",
        "mode", "kiln MB/s", "ratio", "peak RSS", "CLI MB/s", "kiln/CLI"
    );
    // "none" twice: with the store on disk (what a build pays, fsync included) and on tmpfs
    // (the pipeline alone, comparable with the CLI writing to /dev/null).
    let shm = Path::new("/dev/shm");
    let mut runs = vec![("none", "none", scratch.clone())];
    if shm.is_dir() {
        runs.push(("none", "none/shm", shm.to_path_buf()));
    }
    runs.push(("gzip", "gzip", scratch.clone()));
    runs.push(("zstd", "zstd", scratch.clone()));
    for (mode, label, store_base) in runs {
        let name = format!(
            "kiln-bench-store-{}-{}",
            std::process::id(),
            label.replace('/', "-")
        );
        let store = store_base.join(name);
        let r = run_child(mode, &tree, &store);
        let _ = fs::remove_dir_all(&store);
        let cli = cli_rate(mode, &tree, r.input);
        println!(
            "{:<8} {:>10.0} {:>8.1}% {:>7.0} MiB {:>12.0} {:>9.2}x",
            label,
            r.mb_per_s(),
            100.0 * r.output as f64 / r.input as f64,
            r.peak_rss_kib as f64 / 1024.0,
            cli,
            r.mb_per_s() / cli
        );
    }
    println!();
    println!("MB = 10^6 bytes of uncompressed tar input. kiln: gzip -6 (flate2/zlib-rs), zstd -3 (zstdmt, all cores).");
    println!("CLI: tar -cf - | cat / gzip -6 / zstd -3 -T0, to /dev/null.");
    println!("none: store on disk, fsync included; none/shm: store on tmpfs (the pipeline alone).");
    if std::env::var_os("KILN_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&scratch);
    }
}

struct ChildResult {
    secs: f64,
    input: u64,
    output: u64,
    peak_rss_kib: u64,
}

impl ChildResult {
    fn mb_per_s(&self) -> f64 {
        self.input as f64 / 1e6 / self.secs
    }
}

fn run_child(mode: &str, tree: &Path, store: &Path) -> ChildResult {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", mode])
        .arg(tree)
        .arg(store)
        .stderr(Stdio::inherit())
        .output()
        .expect("run bench child");
    assert!(out.status.success(), "bench child {mode} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    ChildResult {
        secs: f[0],
        input: f[1] as u64,
        output: f[2] as u64,
        peak_rss_kib: f[3] as u64,
    }
}

/// In the child: write the tree as one layer and print "secs input output vmhwm_kib".
fn child(mode: &str, tree: &Path, store_dir: &Path) {
    let compression = match mode {
        "none" => Compression::None,
        "gzip" => Compression::Gzip { level: 6 },
        "zstd" => Compression::Zstd { level: 3 },
        other => panic!("unknown mode {other}"),
    };
    let store = Store::open(store_dir).unwrap();
    let t = Instant::now();
    let info =
        layer::write_layer(&store, compression, |w| append_tree(w, tree, Path::new(""))).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{secs} {} {} {}",
        info.uncompressed_size,
        info.size,
        vm_hwm_kib()
    );
}

fn append_tree<W: Write>(
    w: &mut LayerWriter<W>,
    root: &Path,
    rel: &Path,
) -> Result<(), layer::LayerError> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .map_err(layer::LayerError::other)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(layer::LayerError::other)?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(layer::LayerError::other)?;
        let mode = meta.mode() & 0o7777;
        let (uid, gid, mtime, nanos) = (
            u64::from(meta.uid()),
            u64::from(meta.gid()),
            meta.mtime(),
            meta.mtime_nsec() as u32,
        );
        if meta.is_dir() {
            let e = TarEntry::dir(&path)
                .with_mode(mode)
                .with_owner(uid, gid)
                .with_mtime(mtime, nanos);
            w.append(&e, None)?;
            append_tree(w, root, &path)?;
        } else {
            let e = TarEntry::file(&path, meta.len())
                .with_mode(mode)
                .with_owner(uid, gid)
                .with_mtime(mtime, nanos);
            let mut f = fs::File::open(&full).map_err(layer::LayerError::other)?;
            w.append(&e, Some(&mut f))?;
        }
    }
    Ok(())
}

fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// MB/s of `tar -c` of the tree through the mode's CLI compressor, per byte of tar input.
fn cli_rate(mode: &str, tree: &Path, tar_bytes: u64) -> f64 {
    let sink = match mode {
        "none" => "cat",
        "gzip" => "gzip -6",
        "zstd" => "zstd -q -3 -T0",
        _ => unreachable!(),
    };
    let script = format!("tar -C '{}' -cf - . | {sink} > /dev/null", tree.display());
    let t = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run CLI pipeline");
    assert!(status.success(), "{script} failed");
    tar_bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn warm_cache(tree: &Path) {
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("tar -C '{}' -cf - . | cat > /dev/null", tree.display()),
        ])
        .status();
}

/// xorshift64*, so the data is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "return",
    "struct",
    "int",
    "const",
    "void",
    "static",
    "if",
    "else",
    "while",
    "config",
    "error",
    "value",
    "buffer",
    "size_t",
    "char",
    "unsigned",
    "printf",
    "#include",
    "<stdio.h>",
    "self",
    "def",
    "import",
    "from",
    "class",
    "None",
    "True",
    "layer",
    "image",
    "container",
    "0x00",
    "0xff",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "==",
    "->",
    "//",
    "/*",
    "*/",
    "\n",
    "\n    ",
    "\t",
    "usr",
    "lib",
    "share",
    "locale",
];

/// Files of 1 KiB to 4 MiB whose 4 KiB chunks are text-like tokens (60%, compressible like
/// source and docs), structured binary (30%, mostly small-alphabet bytes like code and tables)
/// or random bytes (10%, like already-compressed files).
fn generate_tree(root: &Path, total: u64) -> (usize, u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut written = 0u64;
    let mut files = 0usize;
    let mut buf = Vec::new();
    while written < total {
        let dir = root.join(format!("d{:02}/s{:02}", files % 16, (files / 16) % 8));
        fs::create_dir_all(&dir).unwrap();
        let size = match rng.next() % 10 {
            0..=5 => 1024 + rng.next() % (64 * 1024),
            6..=8 => 64 * 1024 + rng.next() % (512 * 1024),
            _ => 512 * 1024 + rng.next() % (4 * MIB - 512 * 1024),
        }
        .min(total - written);
        fill(&mut rng, &mut buf, size as usize);
        fs::write(dir.join(format!("f{files:06}")), &buf).unwrap();
        written += size;
        files += 1;
    }
    (files, written)
}

fn fill(rng: &mut Rng, buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    while buf.len() < size {
        let chunk = 4096.min(size - buf.len());
        match rng.next() % 10 {
            0..=5 => {
                let end = buf.len() + chunk;
                while buf.len() < end {
                    let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
                    buf.extend_from_slice(w.as_bytes());
                    buf.push(b' ');
                }
            }
            6..=8 => {
                for _ in 0..chunk {
                    let r = rng.next();
                    buf.push(if r.is_multiple_of(4) {
                        (r >> 8) as u8
                    } else {
                        (r >> 8) as u8 & 0x0f
                    });
                }
            }
            _ => {
                for _ in 0..chunk.div_ceil(8) {
                    buf.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
    }
    buf.truncate(size);
}
