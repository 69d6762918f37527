//! The layer writer and reader: round trips, GNU tar compatibility, determinism, compression
//! checked by the CLI tools, and hostile input.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Rng;
use kiln_oci::layer::{self, EntryKind, LayerError, LayerWriter, TarEntry};
use kiln_oci::{open_layer, Compression, Digest, Format, Store};

/// An entry and its content.
type Item = (TarEntry, Vec<u8>);

fn long_dir() -> String {
    format!("a/{}", "d".repeat(120))
}

fn long_file() -> String {
    format!("{}/{}", long_dir(), "f".repeat(100))
}

/// Entries exercising everything the writer encodes, parents before children.
fn rich_entries() -> Vec<Item> {
    let file = |path: &str, data: &[u8]| (TarEntry::file(path, data.len() as u64), data.to_vec());
    let bare = |e: TarEntry| (e, Vec::new());
    let non_utf8 = PathBuf::from(OsStr::from_bytes(b"a/bin\xff\xfeary"));
    vec![
        bare(TarEntry::dir("a").with_mtime(1_700_000_000, 123_456_789)),
        bare(TarEntry::dir(long_dir())),
        file(&long_file(), b"long name content\n"),
        file("a/h\u{e9}llo-w\u{f6}rld-\u{65e5}\u{672c}.txt", b"unicode\n"),
        (TarEntry::file(non_utf8, 3), b"bin".to_vec()),
        (
            TarEntry::file("a/caps", 4)
                .with_xattr(
                    "security.capability",
                    vec![
                        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )
                .with_xattr("user.comment", b"caf\xc3\xa9 = ok\n".to_vec()),
            b"caps".to_vec(),
        ),
        bare(TarEntry::hardlink("a/hard", long_file())),
        bare(TarEntry::symlink("a/abs-link", "/etc/passwd")),
        bare(TarEntry::symlink(
            "a/long-link",
            format!("../{}", "t".repeat(150)),
        )),
        bare(TarEntry::fifo("a/fifo")),
        bare(TarEntry::char_device("a/null", 1, 3)),
        bare(TarEntry::block_device("a/blk", 7, 200)),
        (
            TarEntry::file("a/suid", 2)
                .with_mode(0o4755)
                .with_owner(100_000, 100_000),
            b"#!".to_vec(),
        ),
        (
            TarEntry::file("a/big-ids", 1).with_owner(3_000_000, 4_000_000),
            b"x".to_vec(),
        ),
        bare(TarEntry::dir("a/sticky").with_mode(0o1777)),
        bare(TarEntry::dir("a/empty")),
        bare(TarEntry::whiteout("a/gone")),
        bare(TarEntry::dir("a/opq")),
        bare(TarEntry::opaque_whiteout("a/opq")),
        (
            TarEntry::file("a/subsecond", 1).with_mtime(1_700_000_000, 1),
            b"t".to_vec(),
        ),
        bare(TarEntry::file("a/half-second", 0).with_mtime(5, 500_000_000)),
        // Exactly fills the 100-byte ustar name field: no PAX needed.
        bare(TarEntry::file(format!("a/{}", "n".repeat(98)), 0)),
    ]
}

fn write_tar(items: &[Item], clamp: Option<i64>) -> Vec<u8> {
    let mut w = LayerWriter::new(Vec::new());
    w.set_clamp_mtime(clamp);
    for (e, data) in items {
        let mut r = &data[..];
        let content: Option<&mut dyn Read> = (e.kind == EntryKind::File).then_some(&mut r);
        w.append(e, content).unwrap();
    }
    w.finish().unwrap();
    w.into_inner()
}

fn read_all(bytes: &[u8]) -> Result<Vec<Item>, LayerError> {
    let mut r = open_layer(bytes)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut data = Vec::new();
        r.read_to_end(&mut data).map_err(|source| LayerError::Io {
            op: "read layer",
            source,
        })?;
        out.push((e, data));
    }
    Ok(out)
}

/// Every typeflag in the stream, in order (a walk over headers independent of our reader).
fn typeflags(tar: &[u8]) -> Vec<u8> {
    let mut flags = Vec::new();
    let mut off = 0;
    let mut pax_size: Option<u64> = None;
    while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|&b| b != 0) {
        let h = &tar[off..off + 512];
        let flag = h[156];
        let field = std::str::from_utf8(&h[124..136])
            .unwrap()
            .trim_matches(|c| c == '\0' || c == ' ');
        let mut size = u64::from_str_radix(if field.is_empty() { "0" } else { field }, 8).unwrap();
        if let Some(s) = pax_size.take() {
            size = s;
        }
        if flag == b'x' {
            let body =
                std::str::from_utf8(&tar[off + 512..off + 512 + size as usize]).unwrap_or("");
            pax_size = body
                .lines()
                .find_map(|l| l.split_once(" size=").map(|(_, v)| v.parse().unwrap()));
        }
        if matches!(flag, b'1'..=b'6') {
            size = 0;
        }
        flags.push(flag);
        off += 512 + size.div_ceil(512) as usize * 512;
    }
    flags
}

#[test]
fn round_trip_through_the_reader() {
    let items = rich_entries();
    let tar = write_tar(&items, None);
    let back = read_all(&tar).unwrap();
    assert_eq!(back.len(), items.len());
    for ((want, wdata), (got, gdata)) in items.iter().zip(&back) {
        assert_eq!(got, want);
        assert_eq!(gdata, wdata, "{:?}", want.path);
    }
}

#[test]
fn only_ustar_and_pax_typeflags() {
    let tar = write_tar(&rich_entries(), None);
    let flags = typeflags(&tar);
    assert!(
        flags.iter().all(|f| b"0123456x".contains(f)),
        "{:?}",
        String::from_utf8_lossy(&flags)
    );
    assert!(flags.contains(&b'x'));
    assert_eq!(tar.len() % 512, 0);
    assert!(
        tar[tar.len() - 1024..].iter().all(|&b| b == 0),
        "two zero blocks at the end"
    );
}

#[test]
fn identical_input_gives_identical_bytes() {
    assert_eq!(
        write_tar(&rich_entries(), None),
        write_tar(&rich_entries(), None)
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
        let a = write_rich(&store, c);
        let b = write_rich(&store, c);
        assert_eq!(a, b, "{c}");
    }
}

fn write_rich(store: &Store, c: Compression) -> layer::LayerInfo {
    layer::write_layer(store, c, |w| {
        for (e, data) in rich_entries() {
            let mut r = &data[..];
            let content: Option<&mut dyn Read> = (e.kind == EntryKind::File).then_some(&mut r);
            w.append(&e, content)?;
        }
        Ok(())
    })
    .unwrap()
}

#[test]
fn clamp_mtime_caps_later_times_only() {
    let epoch = 1_600_000_000;
    let tar = write_tar(&rich_entries(), Some(epoch));
    for ((orig, _), (got, _)) in rich_entries().iter().zip(read_all(&tar).unwrap()) {
        if (orig.mtime, orig.mtime_nanos) > (epoch, 0) {
            assert_eq!((got.mtime, got.mtime_nanos), (epoch, 0), "{:?}", orig.path);
        } else {
            assert_eq!((got.mtime, got.mtime_nanos), (orig.mtime, orig.mtime_nanos));
        }
    }
}

#[test]
fn huge_sizes_and_odd_times_use_pax() {
    // Header only: the 8 GiB of content is never produced.
    let entry = TarEntry::file("big", 8 << 30).with_mtime(-2, 500_000_000);
    let mut w = LayerWriter::new(Vec::new());
    let mut zeros = io::repeat(0).take(0);
    let err = w.append(&entry, Some(&mut zeros)).unwrap_err();
    assert!(matches!(err, LayerError::ContentTooShort { .. }));
    let out = w.into_inner();
    let text = String::from_utf8_lossy(&out[512..1024]);
    assert!(text.contains("size=8589934592\n"), "{text}");
    assert!(text.contains("mtime=-1.5\n"), "{text}");
    // The reader sees the PAX values, then fails on the missing content.
    let mut r = open_layer(&out[..]).unwrap();
    let got = r.next_entry().unwrap().unwrap();
    assert_eq!(got.size, 8 << 30);
    assert_eq!((got.mtime, got.mtime_nanos), (-2, 500_000_000));
    assert!(io::copy(&mut r, &mut io::sink()).is_err());
}

#[test]
fn gnu_tar_lists_it() {
    if !common::have_tool("tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar");
    fs::write(&path, write_tar(&rich_entries(), None)).unwrap();
    let listing = common::run(Command::new("tar").arg("-tvf").arg(&path));
    assert!(listing.contains(&long_file()), "{listing}");
    assert!(listing.contains("a/abs-link -> /etc/passwd"), "{listing}");
    assert!(
        listing.contains(&format!("a/hard link to {}", long_file())),
        "{listing}"
    );
    assert!(listing.contains("100000/100000"), "{listing}");
    assert!(listing.contains("3000000/4000000"), "{listing}");
    assert!(listing.contains("rwsr-xr-x"), "{listing}");
    assert!(listing.contains("a/.wh.gone"), "{listing}");
    assert!(listing.contains("a/opq/.wh..wh..opq"), "{listing}");
    assert_eq!(listing.lines().count(), rich_entries().len());
}

#[test]
fn gnu_tar_extracts_it_as_root() {
    if !common::have_tool("tar") {
        return;
    }
    if !common::is_root() {
        eprintln!("skipped: extracting owners and devices needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar");
    fs::write(&path, write_tar(&rich_entries(), None)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    common::run(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&path)
            .arg("-C")
            .arg(&out),
    );
    let meta = |p: &str| fs::symlink_metadata(out.join(p)).unwrap();
    assert_eq!(
        fs::read(out.join(long_file())).unwrap(),
        b"long name content\n"
    );
    assert_eq!(meta("a/hard").ino(), meta(&long_file()).ino());
    assert_eq!(
        fs::read_link(out.join("a/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(meta("a/fifo").file_type().is_fifo());
    assert!(meta("a/null").file_type().is_char_device());
    assert_eq!(meta("a/null").rdev(), nix_makedev(1, 3));
    assert!(meta("a/blk").file_type().is_block_device());
    assert_eq!(meta("a/suid").mode() & 0o7777, 0o4755);
    assert_eq!(
        (meta("a/suid").uid(), meta("a/suid").gid()),
        (100_000, 100_000)
    );
    assert_eq!(
        (meta("a/big-ids").uid(), meta("a/big-ids").gid()),
        (3_000_000, 4_000_000)
    );
    assert_eq!(meta("a/sticky").mode() & 0o7777, 0o1777);
    assert_eq!(meta("a/half-second").mtime_nsec(), 500_000_000);
    assert_eq!(meta("a/subsecond").mtime_nsec(), 1);
    assert!(out.join(OsStr::from_bytes(b"a/bin\xff\xfeary")).exists());
    assert!(out
        .join("a/h\u{e9}llo-w\u{f6}rld-\u{65e5}\u{672c}.txt")
        .exists());
    // std has no getxattr; python3 reads it back.
    if common::have_tool("python3") {
        let xattr = common::run(
            Command::new("python3")
                .args([
                    "-c",
                    "import os,sys; print(os.getxattr(sys.argv[1], 'user.comment').decode())",
                ])
                .arg(out.join("a/caps")),
        );
        assert_eq!(xattr, "caf\u{e9} = ok\n\n");
    }
}

fn nix_makedev(major: u64, minor: u64) -> u64 {
    // glibc's encoding of dev_t.
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[test]
fn compressed_layers_check_out_with_the_cli_tools() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plain = write_rich(&store, Compression::None);
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(plain.size, plain.uncompressed_size);
    if common::have_tool("sha256sum") {
        assert_eq!(
            common::sha256sum(&store.blob_path(&plain.digest)),
            plain.digest.to_string()
        );
    }
    for (c, tool) in [(Compression::GZIP, "gzip"), (Compression::ZSTD, "zstd")] {
        let info = write_rich(&store, c);
        assert_eq!(
            info.diff_id, plain.diff_id,
            "{c}: same tar under any compression"
        );
        assert_eq!(info.uncompressed_size, plain.size);
        assert_eq!(info.media_type, c.oci_media_type());
        let blob = store.blob_path(&info.digest);
        assert_eq!(fs::metadata(&blob).unwrap().len(), info.size);
        assert_eq!(Digest::of(&fs::read(&blob).unwrap()), info.digest);
        if !common::have_tool(tool) || !common::have_tool("sha256sum") {
            continue;
        }
        common::run(Command::new(tool).arg("-t").arg(&blob));
        assert_eq!(common::sha256sum(&blob), info.digest.to_string());
        let unpacked = dir.path().join(format!("unpacked.{tool}"));
        let data = Command::new(tool).arg("-dc").arg(&blob).output().unwrap();
        assert!(data.status.success());
        fs::write(&unpacked, &data.stdout).unwrap();
        assert_eq!(common::sha256sum(&unpacked), info.diff_id.to_string());
        // The reader sniffs the compression and sees the same entries.
        let mut r = open_layer(fs::File::open(&blob).unwrap()).unwrap();
        assert_eq!(
            r.format(),
            if tool == "gzip" {
                Format::Gzip
            } else {
                Format::Zstd
            }
        );
        let entries = r.entries().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(entries.len(), rich_entries().len());
    }
}

#[test]
fn compress_layer_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plain = write_rich(&store, Compression::None);
    let first = layer::compress_layer(&store, &plain.diff_id, Compression::ZSTD).unwrap();
    // Remove the source: a second call must come from the cache, not recompress.
    let backup = fs::read(store.blob_path(&plain.digest)).unwrap();
    let second = layer::compress_layer(&store, &plain.diff_id, Compression::Zstd { level: 19 });
    assert_eq!(second.unwrap().digest, first.digest);
    assert_eq!(first.diff_id, plain.diff_id);
    // A damaged source is refused rather than compressed.
    let mut damaged = backup.clone();
    damaged[600] ^= 1;
    fs::write(store.blob_path(&plain.digest), &damaged).unwrap();
    let err = layer::compress_layer(&store, &plain.diff_id, Compression::GZIP).unwrap_err();
    assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
    assert!(store
        .compressed_for(&plain.diff_id, Compression::GZIP)
        .unwrap()
        .is_none());
    fs::write(store.blob_path(&plain.digest), &backup).unwrap();
    let gz = layer::compress_layer(&store, &plain.diff_id, Compression::GZIP).unwrap();
    assert_eq!(
        store
            .compressed_for(&plain.diff_id, Compression::GZIP)
            .unwrap(),
        Some((gz.digest.clone(), gz.size))
    );
}

#[test]
fn a_failing_fill_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
        let err = layer::write_layer(&store, c, |w| {
            w.append(&TarEntry::dir("x"), None)?;
            Err(LayerError::other("the differ failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("the differ failed"));
    }
    assert_eq!(store.blobs().unwrap().count(), 0);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// Runs the reader over `input`, turning a panic into a test failure that names the case.
fn must_not_panic(case: &str, input: &[u8]) -> Result<usize, String> {
    let input = input.to_vec();
    let res = std::panic::catch_unwind(move || read_all(&input).map(|v| v.len()));
    match res {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => panic!("reader panicked on {case}"),
    }
}

#[test]
fn truncated_archives_are_errors() {
    let tar = write_tar(&rich_entries(), None);
    let body_end = tar.len() - 1024;
    for cut in (1..body_end).step_by(37) {
        let r = must_not_panic(&format!("tar cut at {cut}"), &tar[..cut]);
        if cut % 512 != 0 {
            assert!(r.is_err(), "cut at {cut} (inside a block) read as {r:?}");
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    for cut in (1..gz.len()).step_by(11) {
        let r = must_not_panic(&format!("gzip cut at {cut}"), &gz[..cut]);
        assert!(r.is_err(), "gzip cut at {cut} read as {r:?}");
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng::new(7);
    let magics: [&[u8]; 5] = [
        b"",
        &[0x1f, 0x8b],
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"BZh9",
        &[0xfd, b'7', b'z', b'X', b'Z', 0],
    ];
    for i in 0..300 {
        let mut buf = vec![0u8; rng.below(4096) as usize];
        rng.fill(&mut buf);
        let magic = magics[i % magics.len()];
        let n = magic.len().min(buf.len());
        buf[..n].copy_from_slice(&magic[..n]);
        let r = must_not_panic(&format!("random input {i}"), &buf);
        if buf.len() >= 512 && magic.is_empty() {
            assert!(r.is_err(), "random bytes read as a tar: {r:?}");
        }
    }
    let tar = write_tar(&rich_entries(), None);
    for i in 0..1500 {
        let mut m = tar.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(m.len() as u64) as usize;
            m[at] = rng.next_u64() as u8;
        }
        let _ = must_not_panic(&format!("mutation {i}"), &m);
    }
}

#[test]
fn lying_headers_are_errors() {
    // A file header that claims 1 GiB over 3 bytes of data.
    let mut h = tar::Header::new_ustar();
    h.set_path("liar").unwrap();
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut input = h.as_bytes().to_vec();
    input.extend_from_slice(b"abc");
    assert!(must_not_panic("oversized file", &input).is_err());

    // A PAX header claiming 4 GiB of records: refused before any allocation of that size.
    let mut x = tar::Header::new_ustar();
    x.set_path("PaxHeaders/x").unwrap();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(4 << 30);
    x.set_cksum();
    let err = must_not_panic("huge pax", x.as_bytes()).unwrap_err();
    assert!(err.contains("too large"), "{err}");

    // PAX records that do not add up.
    let records = b"99 path=short\n";
    let mut x = tar::Header::new_ustar();
    x.set_path("PaxHeaders/x").unwrap();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(records.len() as u64);
    x.set_cksum();
    let mut input = x.as_bytes().to_vec();
    input.extend_from_slice(records);
    input.resize(1024, 0);
    input.extend_from_slice(tar::Header::new_ustar().as_bytes());
    assert!(must_not_panic("bad pax", &input).is_err());

    // A bad checksum.
    let mut tar = write_tar(&[(TarEntry::dir("d"), Vec::new())], None);
    tar[0] = b'e';
    let err = must_not_panic("bad checksum", &tar).unwrap_err();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn foreign_archives_are_read() {
    // GNU tar's own output, with GNU long names and a "./" prefix, as base images have.
    if !common::have_tool("tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long = "x".repeat(150);
    fs::create_dir_all(src.join(&long)).unwrap();
    fs::write(src.join(&long).join("f"), b"data").unwrap();
    std::os::unix::fs::symlink("/run", src.join("lnk")).unwrap();
    let out = Command::new("tar")
        .args(["--format=gnu", "--sort=name", "-cf", "-", "-C"])
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let items = read_all(&out.stdout).unwrap();
    let paths: Vec<&Path> = items.iter().map(|(e, _)| e.path.as_path()).collect();
    assert_eq!(
        paths[0],
        Path::new(""),
        "the ./ root entry is an empty path"
    );
    assert!(paths.contains(&Path::new(&long)));
    let file = items
        .iter()
        .find(|(e, _)| e.path == Path::new(&long).join("f"))
        .unwrap();
    assert_eq!(file.1, b"data");
    let lnk = items
        .iter()
        .find(|(e, _)| e.path == Path::new("lnk"))
        .unwrap();
    assert_eq!(lnk.0.kind, EntryKind::Symlink("/run".into()));

    // And the same tree compressed with each CLI compressor.
    for (tool, format) in [
        ("gzip", Format::Gzip),
        ("bzip2", Format::Bzip2),
        ("xz", Format::Xz),
        ("zstd", Format::Zstd),
    ] {
        if !common::have_tool(tool) {
            continue;
        }
        let mut child = Command::new(tool)
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let compressed = child.wait_with_output().unwrap().stdout;
        let mut r = open_layer(&compressed[..]).unwrap();
        assert_eq!(r.format(), format);
        let n = r.entries().collect::<Result<Vec<_>, _>>().unwrap().len();
        assert_eq!(n, items.len(), "{tool}");
    }
}

#[test]
fn xattrs_and_binary_values_survive() {
    let value: Vec<u8> = (0..=255u8).collect();
    let items = vec![(
        TarEntry::file("f", 0).with_xattr("trusted.overlay.x", value.clone()),
        Vec::new(),
    )];
    let back = read_all(&write_tar(&items, None)).unwrap();
    let want: BTreeMap<String, Vec<u8>> = [("trusted.overlay.x".to_owned(), value)].into();
    assert_eq!(back[0].0.xattrs, want);
}

#[test]
fn unsupported_entries_are_skippable() {
    // A GNU volume label ('V') carrying data, then an ordinary file.
    let mut v = tar::Header::new_gnu();
    v.set_path("label").unwrap();
    v.set_entry_type(tar::EntryType::new(b'V'));
    v.set_size(5);
    v.set_cksum();
    let mut input = v.as_bytes().to_vec();
    input.extend_from_slice(b"hello");
    input.resize(1024, 0);
    let tail = write_tar(&[(TarEntry::file("after", 2), b"ok".to_vec())], None);
    input.extend_from_slice(&tail);

    let mut r = open_layer(&input[..]).unwrap();
    match r.next_entry() {
        Err(LayerError::UnsupportedEntry { typeflag: b'V', .. }) => {}
        other => panic!("expected UnsupportedEntry, got {other:?}"),
    }
    let next = r.next_entry().unwrap().unwrap();
    assert_eq!(next.path, Path::new("after"));
    let mut data = String::new();
    r.read_to_string(&mut data).unwrap();
    assert_eq!(data, "ok");
    assert!(r.next_entry().unwrap().is_none());
}
