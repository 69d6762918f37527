//! The content store under load: concurrent writers, many updates, gc, crashes, and OCI tools
//! reading the store root as a layout.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{OciSchemas, Rng};
use kiln_oci::image::{self, media_type, History, ManifestFormat};
use kiln_oci::{layer, Compression, Descriptor, Digest, ImageConfig, Store, StoreError, TarEntry};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn manifest_blob(store: &Store, n: usize) -> Descriptor {
    let (d, size) = store.put_blob(format!("{{\"n\":{n}}}").as_bytes()).unwrap();
    image::descriptor(media_type::OCI_MANIFEST, &d, size)
}

/// A one-layer image (`name` picks the file content so images differ).
fn small_image(
    store: &Store,
    content: &[u8],
    c: Compression,
) -> (image::WrittenImage, layer::LayerInfo) {
    let info = layer::write_layer(store, c, |w| {
        w.append(
            &TarEntry::file("f", content.len() as u64),
            Some(&mut &content[..]),
        )
    })
    .unwrap();
    let mut cfg = ImageConfig::new("linux", "amd64");
    cfg.push_layer(info.diff_id.clone(), History::default());
    let img =
        image::write_image(store, &cfg, &[info.descriptor()], None, ManifestFormat::Oci).unwrap();
    (img, info)
}

fn digest_of(d: &Descriptor) -> Digest {
    Digest::from_oci(d.digest()).unwrap()
}

#[test]
fn concurrent_threads_lose_no_tag() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    Store::open(&root).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                for i in 0..25 {
                    let d = manifest_blob(&store, t * 1000 + i);
                    store.set_tag(&format!("example.com/t{t}:{i}"), &d).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(&root).unwrap();
    assert_eq!(store.tags().unwrap().len(), 8 * 25);
    OciSchemas::new()
        .validate(INDEX, &fs::read(root.join("index.json")).unwrap())
        .unwrap();
}

/// Entry point for child processes of `concurrent_processes_lose_no_tag`; does nothing when run
/// as an ordinary test.
#[test]
fn tag_worker_process() {
    let Ok(spec) = std::env::var("KILN_OCI_TAG_WORKER") else {
        return;
    };
    let mut parts = spec.splitn(3, ',');
    let (root, prefix, count) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let store = Store::open(root).unwrap();
    for i in 0..count.parse::<usize>().unwrap() {
        let d = manifest_blob(&store, i);
        store.set_tag(&format!("{prefix}:{i}"), &d).unwrap();
    }
}

#[test]
fn concurrent_processes_lose_no_tag() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|p| {
            Command::new(&exe)
                .args(["--exact", "tag_worker_process", "--test-threads=1"])
                .env(
                    "KILN_OCI_TAG_WORKER",
                    format!("{},proc{p},30", dir.path().display()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let store = Store::open(dir.path()).unwrap();
    let tags = store.tags().unwrap();
    assert_eq!(tags.len(), 4 * 30);
    for p in 0..4 {
        for i in 0..30 {
            assert!(store.resolve(&format!("proc{p}:{i}")).unwrap().is_some());
        }
    }
}

#[test]
fn many_updates_keep_index_valid_and_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let schemas = OciSchemas::new();
    let blobs: Vec<Descriptor> = (0..5).map(|i| manifest_blob(&store, i)).collect();
    let mut model: BTreeMap<String, Digest> = BTreeMap::new();
    let mut rng = Rng::new(42);
    for step in 0..300 {
        let name = format!("registry.example:5000/ns/app:{}", rng.below(20));
        if rng.below(3) == 0 {
            assert_eq!(
                store.remove_tag(&name).unwrap(),
                model.remove(&name).is_some()
            );
        } else {
            let d = &blobs[rng.below(5) as usize];
            store.set_tag(&name, d).unwrap();
            model.insert(name, digest_of(d));
        }
        if step % 50 == 0 {
            let bytes = fs::read(dir.path().join("index.json")).unwrap();
            schemas.validate(INDEX, &bytes).unwrap();
        }
    }
    let got: BTreeMap<String, Digest> = store
        .tags()
        .unwrap()
        .into_iter()
        .map(|(n, d)| (n, digest_of(&d)))
        .collect();
    assert_eq!(got, model);
    schemas
        .validate(INDEX, &fs::read(dir.path().join("index.json")).unwrap())
        .unwrap();
    schemas
        .validate(
            "application/vnd.oci.layout.header.v1+json",
            &fs::read(dir.path().join("oci-layout")).unwrap(),
        )
        .unwrap();
}

fn backdate(path: &Path) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

#[test]
fn gc_removes_unreachable_and_keeps_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (kept, kept_layer) = small_image(&store, b"kept", Compression::None);
    let (dropped, dropped_layer) = small_image(&store, b"dropped", Compression::None);
    store.set_tag("app:kept", &kept.manifest).unwrap();
    // Both layers get a cached gzip twin; only the reachable layer's twin survives.
    let kept_gz = layer::compress_layer(&store, &kept_layer.diff_id, Compression::GZIP).unwrap();
    let dropped_gz =
        layer::compress_layer(&store, &dropped_layer.diff_id, Compression::GZIP).unwrap();
    let (extra, _) = store.put_blob(b"a build cache record").unwrap();
    let (orphan, _) = store.put_blob(b"nobody wants me").unwrap();
    // Registry origins: the entry of a removed blob goes with it.
    let kept_layer_digest = kept_layer.digest.clone();
    store
        .remember_blob_origin(&kept_layer_digest, "r:5000/kept")
        .unwrap();
    store
        .remember_blob_origin(&dropped_layer.digest, "r:5000/dropped")
        .unwrap();
    // An index tagged by another tool, pointing at the dropped image's manifest.
    let (idx_img, _) = small_image(&store, b"via index", Compression::GZIP);
    let idx = image::build_index(vec![idx_img.manifest.clone()], None).unwrap();
    let (idx_digest, idx_size) = store.put_blob(&image::index_to_vec(&idx).unwrap()).unwrap();
    store
        .set_tag(
            "app:multi",
            &image::descriptor(media_type::OCI_INDEX, &idx_digest, idx_size),
        )
        .unwrap();

    // A dead writer's temp file (old, unlocked) and a live writer's (locked).
    let stale = dir.path().join("tmp/999-1-1.tmp");
    fs::write(&stale, b"partial").unwrap();
    backdate(&stale);
    let mut live = store.blob_writer().unwrap();
    live.write_all(b"in progress").unwrap();

    let report = store.gc(std::slice::from_ref(&extra)).unwrap();

    for d in [
        digest_of(&kept.manifest),
        digest_of(&kept.config),
        kept_layer.digest.clone(),
        kept_gz.digest.clone(),
        extra.clone(),
        idx_digest.clone(),
        digest_of(&idx_img.manifest),
        digest_of(&idx_img.config),
    ] {
        assert!(store.has_blob(&d), "reachable {d} was removed");
    }
    for d in [
        digest_of(&dropped.manifest),
        digest_of(&dropped.config),
        dropped_layer.digest.clone(),
        dropped_gz.digest.clone(),
        orphan.clone(),
    ] {
        assert!(!store.has_blob(&d), "unreachable {d} was kept");
        assert!(report.removed_blobs.contains(&d));
    }
    assert_eq!(report.removed_blobs.len(), 5, "{report:?}");
    assert_eq!(report.removed_temp_files, 1);
    assert!(report.removed_cache_entries >= 1);
    assert_eq!(report.removed_origin_entries, 1);
    assert_eq!(
        store.blob_origins(&kept_layer_digest).unwrap(),
        ["r:5000/kept"]
    );
    assert!(store
        .blob_origins(&dropped_layer.digest)
        .unwrap()
        .is_empty());
    assert!(!stale.exists());
    assert_eq!(
        store
            .compressed_for(&kept_layer.diff_id, Compression::GZIP)
            .unwrap(),
        Some((kept_gz.digest.clone(), kept_gz.size))
    );
    // The live writer is untouched and can still commit.
    let (d, _) = live.commit(None).unwrap();
    assert!(store.has_blob(&d));
    // A second gc finds nothing more to do but the uncommitted blob written after it.
    let again = store.gc(&[extra]).unwrap();
    assert_eq!(again.removed_blobs, vec![d]);
}

#[test]
fn gc_refuses_to_guess_when_a_tagged_manifest_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (d, n) = store.put_blob(b"this is not json").unwrap();
    store
        .set_tag(
            "broken",
            &image::descriptor(media_type::OCI_MANIFEST, &d, n),
        )
        .unwrap();
    let (other, _) = store.put_blob(b"other").unwrap();
    assert!(matches!(store.gc(&[]), Err(StoreError::Json { .. })));
    assert!(
        store.has_blob(&other),
        "nothing may be deleted when gc gives up"
    );
}

/// Entry point for the crash test's victims: writes blobs and tags until killed.
#[test]
fn crash_worker_process() {
    let Ok(root) = std::env::var("KILN_OCI_CRASH_WORKER") else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let mut rng = Rng::new(std::process::id() as u64);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0.. {
        let mut w = store.blob_writer().unwrap();
        for _ in 0..8 {
            rng.fill(&mut buf);
            w.write_all(&buf).unwrap();
        }
        let (d, n) = w.commit(None).unwrap();
        store
            .set_tag(
                &format!("crash:{}", i % 7),
                &image::descriptor(media_type::OCI_LAYER, &d, n),
            )
            .unwrap();
    }
}

#[test]
fn sigkill_at_any_point_leaves_a_usable_store() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    for delay_ms in [15u64, 40, 90, 150, 230] {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_worker_process", "--test-threads=1"])
            .env("KILN_OCI_CRASH_WORKER", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL: no destructor runs, exactly like a machine losing the process.
        child.kill().unwrap();
        child.wait().unwrap();

        let store = Store::open(dir.path()).expect("store opens after a crash");
        store.tags().expect("index.json is whole");
        for d in store.blobs().unwrap() {
            assert!(
                store.verify_blob(&d).unwrap(),
                "blob {d} is truncated or corrupt"
            );
        }
    }
    // Whatever temp files the kills left are removed once old enough.
    let store = Store::open(dir.path()).unwrap();
    for e in fs::read_dir(dir.path().join("tmp")).unwrap() {
        backdate(&e.unwrap().path());
    }
    store.gc(&[]).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn skopeo_reads_the_store_as_a_layout() {
    if !common::have_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (img, info) = small_image(&store, b"for skopeo", Compression::GZIP);
    store
        .set_tag("docker.io/library/app:1", &img.manifest)
        .unwrap();
    let out = common::run(Command::new("skopeo").arg("inspect").arg(format!(
        "oci:{}:docker.io/library/app:1",
        dir.path().display()
    )));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], img.manifest.digest().to_string());
    assert_eq!(v["Layers"][0], info.digest.to_string());
    assert_eq!(v["Os"], "linux");
}

#[test]
fn umoci_unpacks_an_image_from_the_store() {
    if !common::have_tool("umoci") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let info = layer::write_layer(&store, Compression::GZIP, |w| {
        w.append(&TarEntry::dir("etc"), None)?;
        w.append(&TarEntry::file("etc/motd", 6), Some(&mut &b"hello\n"[..]))?;
        w.append(&TarEntry::symlink("motd", "etc/motd"), None)
    })
    .unwrap();
    let mut cfg = ImageConfig::new("linux", "amd64");
    cfg.push_layer(info.diff_id.clone(), History::default());
    let img = image::write_image(
        &store,
        &cfg,
        &[info.descriptor()],
        None,
        ManifestFormat::Oci,
    )
    .unwrap();
    store.set_tag("latest", &img.manifest).unwrap();
    let bundle = dir.path().join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !common::is_root() {
        cmd.arg("--rootless");
    }
    common::run(
        cmd.arg("--image")
            .arg(format!("{}:latest", store.root().display()))
            .arg(&bundle),
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/etc/motd")).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        fs::read_link(bundle.join("rootfs/motd")).unwrap(),
        Path::new("etc/motd")
    );
}
