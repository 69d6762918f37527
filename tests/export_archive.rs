//! Image archives, end to end through `kiln_oci::archive`: the docker tar, OCI tar and OCI
//! directory kiln writes are read by the real clients (dockerd 20.10, podman, skopeo, umoci,
//! oci-image-tool, the OCI JSON schemas); what those clients write (`docker save`, `podman save`
//! in both formats, `skopeo copy`) is read back by `load_archive`; hostile archives are refused
//! without harm to the store; and exports are byte-for-byte reproducible.
//!
//! Test images are made here with the kiln-oci API: the busybox rootfs as one layer with
//! `Cmd ["sh"]`, and a two-layer image whose second layer deletes `/bin/vi` with a whiteout.
//! The daemon tests need root; each step prints its duration (see them with --nocapture).

mod util;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln_oci::archive::{self, ArchiveError, ExportImage, LoadedImage};
use kiln_oci::image::{self, History, ManifestFormat};
use kiln_oci::layer::{self, EntryKind, TarEntry};
use kiln_oci::{Compression, Digest, ImageConfig, Store};
use serde_json::Value;

use util::dockerd::Dockerd;
use util::fixtures::busybox_rootfs;
use util::podman::Podman;
use util::tools::{
    assert_success, oci_validate_layout, output, require_tool, skopeo, umoci_unpack, Steps,
    TempRoot,
};

// ---------------------------------------------------------------------------------------------
// Test images

/// The test images in one store.
struct Images {
    /// busybox, one layer, `Cmd ["sh"]`.
    app: Digest,
    app_config: Digest,
    /// busybox plus a layer adding /hello.txt and whiting out /bin/vi.
    wh: Digest,
    wh_config: Digest,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The busybox rootfs tarball copied entry by entry into a layer of `store`.
fn busybox_layer(store: &Store, rootfs: &Path) -> layer::LayerInfo {
    layer::write_layer(store, Compression::None, |w| {
        let file = File::open(rootfs).map_err(layer::LayerError::other)?;
        let mut r = layer::open_layer(file)?;
        while let Some(e) = r.next_entry()? {
            if e.path.as_os_str().is_empty() {
                continue;
            }
            if e.kind == EntryKind::File {
                w.append(&e, Some(&mut r))?;
            } else {
                w.append(&e, None)?;
            }
        }
        Ok(())
    })
    .expect("write busybox layer")
}

fn build_images(store: &Store, rootfs: &Path) -> Images {
    let base = busybox_layer(store, rootfs);
    let mut cfg = ImageConfig::new("linux", host_arch());
    cfg.created = Some("2024-01-01T00:00:00Z".into());
    let c = cfg.config_mut();
    c.cmd = Some(vec!["sh".into()]);
    c.env = Some(vec!["PATH=/bin".into()]);
    cfg.push_layer(
        base.diff_id.clone(),
        History {
            created_by: Some("busybox rootfs".into()),
            ..History::default()
        },
    );
    let app = image::write_image(store, &cfg, &[base.descriptor()], None, ManifestFormat::Oci)
        .expect("write app image");

    let top = layer::write_layer(store, Compression::None, |w| {
        w.append(&TarEntry::whiteout("bin/vi"), None)?;
        let hello = b"hi\n";
        w.append(&TarEntry::file("hello.txt", 3), Some(&mut &hello[..]))
    })
    .expect("write top layer");
    cfg.push_layer(
        top.diff_id.clone(),
        History {
            created_by: Some("add /hello.txt, remove /bin/vi".into()),
            ..History::default()
        },
    );
    let wh = image::write_image(
        store,
        &cfg,
        &[base.descriptor(), top.descriptor()],
        None,
        ManifestFormat::Oci,
    )
    .expect("write two-layer image");
    let d = |desc: &kiln_oci::Descriptor| Digest::from_oci(desc.digest()).unwrap();
    Images {
        app: d(&app.manifest),
        app_config: d(&app.config),
        wh: d(&wh.manifest),
        wh_config: d(&wh.config),
    }
}

fn export(manifest: &Digest, names: &[&str]) -> ExportImage {
    ExportImage {
        manifest: manifest.clone(),
        names: names.iter().map(|s| s.to_string()).collect(),
    }
}

fn docker_tar(store: &Store, images: &[ExportImage], c: Compression, path: &Path) {
    let mut f = File::create(path).unwrap();
    archive::write_docker_archive(store, images, c, &mut f).expect("write docker archive");
}

fn oci_tar(store: &Store, images: &[ExportImage], c: Compression, path: &Path) {
    let mut f = File::create(path).unwrap();
    archive::write_oci_archive(store, images, c, &mut f).expect("write oci archive");
}

/// The config digest of a stored manifest.
fn config_of(store: &Store, manifest: &kiln_oci::Descriptor) -> Digest {
    let d = Digest::from_oci(manifest.digest()).unwrap();
    let m = image::read_manifest(store, &d).unwrap();
    Digest::from_oci(m.value.config().digest()).unwrap()
}

fn load_file(store: &Store, path: &Path) -> Vec<LoadedImage> {
    archive::load_archive(store, File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("load_archive {}: {e}", path.display()))
}

fn sha256_file(path: &Path) -> Digest {
    let mut h = kiln_oci::Sha256Writer::new(io::sink());
    io::copy(&mut File::open(path).unwrap(), &mut h).unwrap();
    h.finish().1
}

// ---------------------------------------------------------------------------------------------
// dockerd 20.10

/// docker load of our tar (uncompressed and gzip) runs the images with the same image ID;
/// `docker save` output (legacy layout, with a layer shared through a symlink) loads into the
/// store and, exported again, loads back into docker.
#[test]
fn dockerd_loads_our_tars_and_we_load_docker_save() {
    let mut steps = Steps::new();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let work = TempRoot::new("exp-docker");
    let store = Store::open(work.join("store")).unwrap();
    let imgs = build_images(&store, &rootfs);
    let imported = archive::import_rootfs(
        &store,
        File::open(&rootfs).unwrap(),
        "linux",
        host_arch(),
        None,
        Some(1_700_000_000),
    )
    .expect("import_rootfs");
    let imported = Digest::from_oci(imported.digest()).unwrap();
    steps.done("store with app:1, wh:1 and an imported rootfs");

    let Some(d) = Dockerd::start() else { return };
    steps.done(&format!("dockerd started ({})", d.storage_driver()));

    // Uncompressed: all three images in one tar.
    let plain = work.join("plain.tar");
    docker_tar(
        &store,
        &[
            export(&imgs.app, &["docker.io/library/app:1"]),
            export(&imgs.wh, &["docker.io/library/wh:1"]),
            export(&imported, &["docker.io/kiln/imported:1"]),
        ],
        Compression::None,
        &plain,
    );
    steps.done("write_docker_archive (uncompressed, 3 images)");
    let loaded = assert_success(&d.load(&plain), "docker load (uncompressed)");
    for want in ["app:1", "wh:1", "kiln/imported:1"] {
        assert!(
            loaded.contains(&format!("Loaded image: {want}")),
            "{loaded}"
        );
    }
    steps.done("docker load (uncompressed)");
    let ok = |image: &str| {
        let out = d.run(image, &["sh", "-c", "echo ok"]);
        assert_eq!(
            assert_success(&out, &format!("docker run {image}")).trim(),
            "ok"
        );
    };
    ok("app:1");
    ok("kiln/imported:1");
    let out = d.run(
        "wh:1",
        &["sh", "-c", "cat /hello.txt; [ -e /bin/vi ] || echo vi-gone"],
    );
    assert_eq!(assert_success(&out, "docker run wh:1"), "hi\nvi-gone\n");
    let id = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "app:1"]);
    assert_eq!(
        id.trim(),
        imgs.app_config.as_str(),
        "image ID must be the config digest"
    );
    let id = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "wh:1"]);
    assert_eq!(id.trim(), imgs.wh_config.as_str());
    steps.done("docker run x3 (whiteout honoured) + image IDs = config digests");

    // gzip layers: remove the images first so docker really reads the new layer data.
    d.docker_ok(&["rmi", "app:1", "wh:1", "kiln/imported:1"]);
    let gz = work.join("gzip.tar");
    docker_tar(
        &store,
        &[
            export(&imgs.app, &["docker.io/me/app:gz"]),
            export(&imgs.wh, &["localhost:5000/wh:gz"]),
        ],
        Compression::GZIP,
        &gz,
    );
    steps.done("write_docker_archive (gzip layers)");
    let loaded = assert_success(&d.load(&gz), "docker load (gzip)");
    assert!(loaded.contains("Loaded image: me/app:gz"), "{loaded}");
    assert!(
        loaded.contains("Loaded image: localhost:5000/wh:gz"),
        "{loaded}"
    );
    ok("me/app:gz");
    let out = d.run("localhost:5000/wh:gz", &["cat", "/hello.txt"]);
    assert_eq!(assert_success(&out, "docker run wh:gz"), "hi\n");
    let id = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "me/app:gz"]);
    assert_eq!(
        id.trim(),
        imgs.app_config.as_str(),
        "gzip must not change the image ID"
    );
    steps.done("docker load (gzip) + run + same image ID");

    // zstd is allowed but dockerd 20.10 cannot decompress it; record what it says. The images
    // sharing its layer go first: docker skips the data of layers it already has.
    d.docker_ok(&["rmi", "me/app:gz", "localhost:5000/wh:gz"]);
    let zst = work.join("zstd.tar");
    docker_tar(
        &store,
        &[export(&imgs.app, &["docker.io/library/zst:1"])],
        Compression::ZSTD,
        &zst,
    );
    let out = d.load(&zst);
    println!(
        "note: docker load of zstd layers: {} ({})",
        if out.status.success() {
            "accepted"
        } else {
            "refused"
        },
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let version = d.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    if major < 23 {
        assert!(
            !out.status.success(),
            "dockerd {version} was expected to refuse zstd layers"
        );
    }
    steps.done("docker load of zstd layers refused by dockerd < 23");

    // docker save of two imports sharing their only layer: 20.10 writes the layer once and a
    // symlink for the second image.
    let rootfs_s = rootfs.to_str().unwrap();
    d.docker_ok(&["import", "--change", "CMD [\"sh\"]", rootfs_s, "legacy:1"]);
    d.docker_ok(&[
        "import",
        "--change",
        "CMD [\"echo\", \"two\"]",
        rootfs_s,
        "legacy:2",
    ]);
    let saved = work.join("saved.tar");
    d.docker_ok(&[
        "save",
        "-o",
        saved.to_str().unwrap(),
        "legacy:1",
        "legacy:2",
    ]);
    let listing = assert_success(
        &output(Command::new("tar").arg("-tvf").arg(&saved)),
        "tar -tvf docker save output",
    );
    assert!(
        listing.contains("layer.tar ->"),
        "expected a shared layer symlink:\n{listing}"
    );
    steps.done("docker import x2 + docker save (legacy layout)");

    let store2 = Store::open(work.join("store2")).unwrap();
    let t = Instant::now();
    let loaded = load_file(&store2, &saved);
    println!("load_archive(docker save): {:?}", t.elapsed());
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    let mut re_export = Vec::new();
    // docker 20.10 writes manifest.json in map order, not in argument order: match by name.
    for name in ["legacy:1", "legacy:2"] {
        let full = format!("docker.io/library/{name}");
        let img = loaded
            .iter()
            .find(|img| img.names == vec![full.clone()])
            .unwrap_or_else(|| panic!("{full} not among the loaded images: {loaded:?}"));
        let id = d.docker_ok(&["image", "inspect", "--format", "{{.Id}}", name]);
        assert_eq!(
            id.trim(),
            config_of(&store2, &img.manifest).as_str(),
            "{name}"
        );
        let tagged = store2.resolve(&full).unwrap().expect("tagged in the store");
        assert_eq!(tagged.digest(), img.manifest.digest());
        let manifest = Digest::from_oci(img.manifest.digest()).unwrap();
        re_export.push(ExportImage {
            manifest,
            names: vec![format!("docker.io/library/re{name}")],
        });
    }
    steps.done("load_archive(docker save) + IDs match docker's");

    d.docker_ok(&["rmi", "legacy:1", "legacy:2"]);
    let again = work.join("again.tar");
    docker_tar(&store2, &re_export, Compression::None, &again);
    assert_success(&d.load(&again), "docker load (re-exported docker save)");
    ok("relegacy:1");
    let out = d.run("relegacy:2", &[] as &[&str]);
    assert_eq!(assert_success(&out, "docker run relegacy:2").trim(), "two");
    steps.done("re-export + docker load + run");
    println!("total {:.1}s", steps.total().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// podman, skopeo, umoci, oci-image-tool, JSON schemas

/// podman loads and runs our docker tar and OCI tar; skopeo inspects all our outputs; umoci,
/// oci-image-tool and the OCI JSON schemas accept the layout; and `podman save` (both formats)
/// and `skopeo copy` output loads back with the same config digest.
#[test]
fn podman_skopeo_and_oci_tools_agree() {
    let mut steps = Steps::new();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let work = TempRoot::new("exp-podman");
    let store = Store::open(work.join("store")).unwrap();
    let imgs = build_images(&store, &rootfs);
    let app = [export(&imgs.app, &["docker.io/library/app:1"])];
    // Distinct tags: OCI tools address a layout's images by the tag alone.
    let both = [
        export(&imgs.app, &["docker.io/library/app:1"]),
        export(&imgs.wh, &["docker.io/library/wh:w"]),
    ];
    let dtar = work.join("docker.tar");
    docker_tar(&store, &app, Compression::None, &dtar);
    let otar = work.join("oci.tar");
    oci_tar(&store, &both, Compression::GZIP, &otar);
    let odir = work.join("layout");
    archive::write_oci_dir(&store, &app, Compression::GZIP, &odir).unwrap();
    steps.done("docker tar, OCI tar (gzip), OCI dir (gzip)");

    if require_tool("skopeo") {
        let inspect = |target: String| {
            let out = skopeo(&["inspect", &target]);
            let v: Value =
                serde_json::from_str(&assert_success(&out, &format!("skopeo inspect {target}")))
                    .unwrap();
            assert_eq!(
                v["Layers"].as_array().map(Vec::len),
                Some(1),
                "{target}: {v:#}"
            );
            assert_eq!(v["Architecture"], host_arch(), "{target}");
            let out = skopeo(&["inspect", "--config", "--raw", &target]);
            let config = out.stdout;
            assert!(out.status.success(), "skopeo inspect --config {target}");
            assert_eq!(
                Digest::of(&config),
                imgs.app_config,
                "{target}: config bytes changed"
            );
        };
        inspect(format!("docker-archive:{}", dtar.display()));
        inspect(format!("oci-archive:{}", dtar.display()));
        inspect(format!("oci-archive:{}:1", otar.display()));
        inspect(format!("oci:{}:1", odir.display()));
        steps.done("skopeo inspect docker-archive:/oci-archive: (docker tar), oci-archive: (OCI tar), oci: (dir)");
    }

    // Debian's oci-image-tool (1.0.0-rc1) fails on every tarball ("unable to walk: end of
    // walk", umoci's own layouts included), so the tars are checked extracted.
    let mut layouts = vec![odir.clone()];
    for tar in [&dtar, &otar] {
        let dir = work.join(format!(
            "{}-extracted",
            tar.file_stem().unwrap().to_string_lossy()
        ));
        fs::create_dir_all(&dir).unwrap();
        let out = output(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&dir));
        assert_success(&out, &format!("tar -xf {}", tar.display()));
        layouts.push(dir);
    }
    if require_tool("oci-image-tool") {
        assert_success(
            &oci_validate_layout(&odir, Some("1")),
            "oci-image-tool validate --ref",
        );
        for dir in &layouts {
            let out = oci_validate_layout(dir, None);
            assert_success(&out, &format!("oci-image-tool validate {}", dir.display()));
        }
        steps.done("oci-image-tool validate: dir, docker tar and OCI tar (extracted)");
    }
    if require_tool("umoci") {
        let bundle = work.join("bundle");
        let out = umoci_unpack(&format!("{}:1", odir.display()), &bundle);
        assert_success(&out, "umoci unpack");
        assert!(bundle.join("rootfs/bin/busybox").is_file());
        steps.done("umoci unpack (dir)");
    }
    if require_tool("python3") {
        for dir in &layouts {
            validate_schemas(dir);
        }
        steps.done("JSON schemas: index.json, manifests, configs, oci-layout of all three");
    }

    let Some(p) = Podman::new() else { return };
    assert_success(&p.load(&dtar), "podman load (docker tar)");
    let out = p.run("docker.io/library/app:1", &["sh", "-c", "echo ok"]);
    assert_eq!(assert_success(&out, "podman run app:1").trim(), "ok");
    steps.done(&format!(
        "podman load (docker tar) + run ({})",
        p.storage_driver()
    ));
    // podman 4.3 refuses OCI archives holding several images ("more than one image in oci,
    // choose an image"); the docker tar has no such limit.
    let wh_tar = work.join("wh-oci.tar");
    oci_tar(&store, &both[1..], Compression::GZIP, &wh_tar);
    let out = assert_success(&p.load(&wh_tar), "podman load (OCI tar, gzip)");
    assert!(out.contains("docker.io/library/wh:w"), "{out}");
    let out = p.run(
        "docker.io/library/wh:w",
        &["sh", "-c", "cat /hello.txt; [ -e /bin/vi ] || echo vi-gone"],
    );
    assert_eq!(assert_success(&out, "podman run wh:1"), "hi\nvi-gone\n");
    steps.done("podman load (OCI tar) + run (whiteout honoured)");

    for format in ["docker-archive", "oci-archive"] {
        let saved = work.join(format!("podman-{format}.tar"));
        p.podman_ok(&[
            "save",
            "--format",
            format,
            "-o",
            saved.to_str().unwrap(),
            "docker.io/library/app:1",
        ]);
        let fresh = Store::open(work.join(format!("store-{format}"))).unwrap();
        let loaded = load_file(&fresh, &saved);
        assert_eq!(loaded.len(), 1, "{format}: {loaded:?}");
        assert_eq!(
            config_of(&fresh, &loaded[0].manifest),
            imgs.app_config,
            "{format}"
        );
        println!("podman save --format {format}: names {:?}", loaded[0].names);
        // And back out again: re-exported under a new name, podman loads and runs it.
        let again = work.join(format!("again-{format}.tar"));
        let manifest = Digest::from_oci(loaded[0].manifest.digest()).unwrap();
        let name = format!("docker.io/library/again:{}", &format[..3]);
        docker_tar(
            &fresh,
            &[export(&manifest, &[&name])],
            Compression::None,
            &again,
        );
        assert_success(
            &p.load(&again),
            &format!("podman load (re-exported {format})"),
        );
        let out = p.run(&name, &["sh", "-c", "echo ok"]);
        assert_eq!(
            assert_success(&out, &format!("podman run {name}")).trim(),
            "ok"
        );
        steps.done(&format!(
            "podman save --format {format} + load_archive + re-export + podman load/run"
        ));
    }
    drop(p);

    if require_tool("skopeo") {
        // From our OCI directory the config travels unchanged; from a docker archive
        // containers/image re-serialises it as an OCI config (new digest, same layers).
        let diff_ids = |store: &Store, manifest: &Digest| {
            let m = image::read_manifest(store, manifest).unwrap();
            let c = Digest::from_oci(m.value.config().digest()).unwrap();
            image::read_config(store, &c).unwrap().value.rootfs.diff_ids
        };
        let want_diff_ids = diff_ids(&store, &imgs.app);
        for (src, name) in [
            (
                format!("oci:{}:1", odir.display()),
                "docker.io/library/sk:1",
            ),
            (
                format!("docker-archive:{}", dtar.display()),
                "localhost/sk:2",
            ),
        ] {
            let sk = work.join(format!("skopeo-{}.tar", &src[..3]));
            let dest = format!("oci-archive:{}:{name}", sk.display());
            assert_success(
                &skopeo(&["copy", &src, &dest]),
                &format!("skopeo copy {src} {dest}"),
            );
            let fresh = Store::open(work.join(format!("store-skopeo-{}", &src[..3]))).unwrap();
            let loaded = load_file(&fresh, &sk);
            assert_eq!(loaded.len(), 1);
            assert_eq!(loaded[0].names, [name.to_string()]);
            let manifest = Digest::from_oci(loaded[0].manifest.digest()).unwrap();
            assert_eq!(diff_ids(&fresh, &manifest), want_diff_ids, "{src}");
            if src.starts_with("oci:") {
                assert_eq!(config_of(&fresh, &loaded[0].manifest), imgs.app_config);
            }
        }
        steps.done("skopeo copy -> oci-archive: + load_archive");
    }
    println!("total {:.1}s", steps.total().as_secs_f64());
}

/// Validates a layout's index.json, manifests, configs and oci-layout against the OCI image-spec
/// JSON schemas, with python3-jsonschema (draft 4, as the schemas are written).
fn validate_schemas(layout: &Path) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus/oci-image-spec-schema/schema");
    if !util::tools::require(schemas.is_dir(), "the OCI schema corpus") {
        return;
    }
    let out = output(
        Command::new("python3")
            .arg("-c")
            .arg(SCHEMA_CHECK)
            .arg(&schemas)
            .arg(layout),
    );
    let text = assert_success(&out, &format!("schema validation of {}", layout.display()));
    println!("{}", text.trim());
}

/// The schemas carry nested draft-4 `id`s that move the base URI of their relative `$ref`s
/// around; the check drops them and resolves every reference by file name instead.
const SCHEMA_CHECK: &str = r##"
import json, os, sys
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

schema_dir, layout = sys.argv[1], sys.argv[2]

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not (k == "id" and isinstance(v, str))}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

def load_schema(name):
    with open(os.path.join(schema_dir, name)) as f:
        return strip(json.load(f))

def retrieve(uri):
    name = uri.split("#")[0].rsplit("/", 1)[-1]
    return Resource.from_contents(load_schema(name), default_specification=DRAFT4)

registry = Registry(retrieve=retrieve)

def check(schema_name, path):
    schema = load_schema(schema_name)
    schema["id"] = "file:///schema/" + schema_name
    with open(path, "rb") as f:
        doc = json.load(f)
    Draft4Validator(schema, registry=registry).validate(doc)
    return doc

def blob(desc):
    algo, hexd = desc["digest"].split(":")
    return os.path.join(layout, "blobs", algo, hexd)

n = 0
check("image-layout-schema.json", os.path.join(layout, "oci-layout")); n += 1
index = check("image-index-schema.json", os.path.join(layout, "index.json")); n += 1
seen = set()
for m in index["manifests"]:
    if m["digest"] in seen:
        continue
    seen.add(m["digest"])
    manifest = check("image-manifest-schema.json", blob(m)); n += 1
    check("config-schema.json", blob(manifest["config"])); n += 1
print(f"{n} documents valid in {layout}")
"##;

// ---------------------------------------------------------------------------------------------
// Round trips and determinism (no daemons)

/// Two exports give the same bytes; compression happens once per layer; our own tars (plain,
/// gzip layers, zstd layers, gzip as a whole, manifest.json only, read a few bytes at a time)
/// load back with the config digest unchanged; an OCI directory merges new images.
#[test]
fn exports_are_reproducible_and_round_trip() {
    let mut steps = Steps::new();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let work = TempRoot::new("exp-rt");
    let store = Store::open(work.join("store")).unwrap();
    let imgs = build_images(&store, &rootfs);
    let both = [
        export(
            &imgs.app,
            &["docker.io/library/app:1", "localhost:5000/app:2"],
        ),
        export(&imgs.wh, &["docker.io/library/wh:1"]),
    ];
    steps.done("store with app and wh");

    for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
        let t = Instant::now();
        let (a, b) = (
            work.join(format!("a-{c}.tar")),
            work.join(format!("b-{c}.tar")),
        );
        docker_tar(&store, &both, c, &a);
        let first = t.elapsed();
        let blobs_after_first = store.blobs().unwrap().count();
        let t = Instant::now();
        docker_tar(&store, &both, c, &b);
        let second = t.elapsed();
        assert_eq!(
            sha256_file(&a),
            sha256_file(&b),
            "docker tar ({c}) differs between runs"
        );
        assert_eq!(
            store.blobs().unwrap().count(),
            blobs_after_first,
            "{c}: second export stored more"
        );
        let (oa, ob) = (
            work.join(format!("oa-{c}.tar")),
            work.join(format!("ob-{c}.tar")),
        );
        oci_tar(&store, &both, c, &oa);
        oci_tar(&store, &both, c, &ob);
        assert_eq!(
            sha256_file(&oa),
            sha256_file(&ob),
            "OCI tar ({c}) differs between runs"
        );
        println!(
            "{c}: docker tar {} bytes; first export {first:?}, second (cached) {second:?}",
            fs::metadata(&a).unwrap().len()
        );
        steps.done(&format!("{c}: docker tar x2 + OCI tar x2 identical"));
    }

    // The gzip tar keeps the config blob (image ID) and lists gzip layers in a new manifest.
    let gz = work.join("a-gzip:6.tar");
    let entries = tar_files(&gz);
    let manifest: Value = serde_json::from_slice(&entries["manifest.json"]).unwrap();
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", imgs.app_config.hex()),
        "{manifest:#}"
    );
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:1", "localhost:5000/app:2"])
    );
    let repos: Value = serde_json::from_slice(&entries["repositories"]).unwrap();
    assert!(
        repos["app"]["1"].is_string() && repos["localhost:5000/app"]["2"].is_string(),
        "{repos}"
    );
    let index: Value = serde_json::from_slice(&entries["index.json"]).unwrap();
    let ann = &index["manifests"][0]["annotations"];
    assert_eq!(
        ann["io.containerd.image.name"], "docker.io/library/app:1",
        "{index:#}"
    );
    assert_eq!(ann["org.opencontainers.image.ref.name"], "1");
    let m0 = index["manifests"][0]["digest"].as_str().unwrap();
    let m0: Value =
        serde_json::from_slice(&entries[&format!("blobs/sha256/{}", &m0[7..])]).unwrap();
    assert_eq!(
        m0["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(m0["config"]["digest"], imgs.app_config.as_str());
    let names: Vec<&String> = entries.keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries must be sorted");
    steps.done("gzip tar: same config, new OCI manifest, RepoTags/repositories/annotations");

    // Our own tars load back: the OCI layout is preferred, so manifests stay byte for byte.
    let plain = work.join("a-none.tar");
    let fresh = Store::open(work.join("load-plain")).unwrap();
    let loaded = load_file(&fresh, &plain);
    assert_eq!(loaded.len(), 2);
    assert_eq!(
        Digest::from_oci(loaded[0].manifest.digest()).unwrap(),
        imgs.app
    );
    assert_eq!(
        loaded[0].names,
        ["docker.io/library/app:1", "localhost:5000/app:2"]
    );
    assert_eq!(
        Digest::from_oci(loaded[1].manifest.digest()).unwrap(),
        imgs.wh
    );
    for (name, manifest) in [
        ("docker.io/library/app:1", &imgs.app),
        ("docker.io/library/wh:1", &imgs.wh),
    ] {
        let tagged = fresh.resolve(name).unwrap().expect(name);
        assert_eq!(Digest::from_oci(tagged.digest()).unwrap(), *manifest);
    }
    steps.done("load_archive(own docker tar): same manifests, tags set");

    for c in ["gzip:6", "zstd:3"] {
        let fresh = Store::open(work.join(format!("load-{c}"))).unwrap();
        let loaded = load_file(&fresh, &work.join(format!("a-{c}.tar")));
        assert_eq!(
            config_of(&fresh, &loaded[0].manifest),
            imgs.app_config,
            "{c}"
        );
        assert_eq!(
            config_of(&fresh, &loaded[1].manifest),
            imgs.wh_config,
            "{c}"
        );
    }
    steps.done("load_archive(own gzip / zstd tars): same configs");

    // The whole tar gzip-compressed, read through a reader that returns 7 bytes at a time.
    let whole = work.join("whole.tar.gz");
    let status = Command::new("gzip")
        .arg("-c")
        .arg(&plain)
        .stdout(File::create(&whole).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = Store::open(work.join("load-whole-gz")).unwrap();
    let t = Instant::now();
    let loaded = archive::load_archive(&fresh, Dribble(File::open(&whole).unwrap())).unwrap();
    assert_eq!(
        Digest::from_oci(loaded[1].manifest.digest()).unwrap(),
        imgs.wh
    );
    steps.done(&format!(
        "load_archive(gzip-compressed tar, 7-byte reads) in {:?}",
        t.elapsed()
    ));

    // manifest.json alone (as docker ≥ 25 or BuildKit write it, gzip layers in blobs/): the
    // docker path, which decompresses layers and checks them against the diffIDs.
    let docker_only = work.join("docker-only.tar");
    rewrite_tar(&work.join("a-gzip:6.tar"), &docker_only, |name| {
        name != "index.json" && name != "oci-layout"
    });
    let fresh = Store::open(work.join("load-docker-only")).unwrap();
    let loaded = load_file(&fresh, &docker_only);
    // RepoTags hold the familiar form; it normalises back to the full name.
    assert_eq!(
        loaded[0].names,
        ["docker.io/library/app:1", "localhost:5000/app:2"]
    );
    assert_eq!(config_of(&fresh, &loaded[1].manifest), imgs.wh_config);
    let m = image::read_manifest(
        &fresh,
        &Digest::from_oci(loaded[1].manifest.digest()).unwrap(),
    )
    .unwrap();
    assert!(m
        .value
        .layers()
        .iter()
        .all(|l| l.media_type().to_string() == "application/vnd.oci.image.layer.v1.tar"));
    // The gzip files it read are remembered as the layers' gzip form: a gzip export reuses them.
    let diff_id = Digest::from_oci(m.value.layers()[0].digest()).unwrap();
    assert!(fresh
        .compressed_for(&diff_id, Compression::GZIP)
        .unwrap()
        .is_some());
    steps.done("load_archive(manifest.json only, gzip layers): decompressed + diffIDs checked");

    // OCI directory: created, then merged into.
    let dir = work.join("layout");
    archive::write_oci_dir(&store, &both[..1], Compression::None, &dir).unwrap();
    archive::write_oci_dir(&store, &both[1..], Compression::GZIP, &dir).unwrap();
    archive::write_oci_dir(&store, &both[..1], Compression::GZIP, &dir).unwrap();
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/library/wh:1",
            "docker.io/library/app:1",
            "localhost:5000/app:2"
        ]
    );
    let stray: Vec<_> = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
    let err = archive::write_oci_dir(
        &store,
        &both[..1],
        Compression::None,
        &work.join("store/blobs"),
    )
    .unwrap_err();
    println!("write_oci_dir into a non-layout dir: {err}");
    assert!(matches!(err, ArchiveError::NotALayout { .. }), "{err}");
    steps.done("write_oci_dir: create, merge, replace by name; refuses a non-layout dir");

    // import_rootfs: the xz tarball becomes one uncompressed layer, unchanged.
    let desc = archive::import_rootfs(
        &store,
        File::open(&rootfs).unwrap(),
        "linux",
        "arm64",
        Some("v8"),
        Some(0),
    )
    .unwrap();
    let m = image::read_manifest(&store, &Digest::from_oci(desc.digest()).unwrap()).unwrap();
    let cfg = image::read_config(
        &store,
        &Digest::from_oci(m.value.config().digest()).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg.value.created.as_deref(), Some("1970-01-01T00:00:00Z"));
    assert_eq!(
        (
            cfg.value.architecture.as_str(),
            cfg.value.variant.as_deref()
        ),
        ("arm64", Some("v8"))
    );
    assert_eq!(
        cfg.value.history[0].created_by.as_deref(),
        Some("kiln import")
    );
    let xz = output(Command::new("xz").arg("-dc").arg(&rootfs));
    assert_eq!(
        Digest::of(&xz.stdout),
        cfg.value.rootfs.diff_ids[0],
        "layer must be the tar as-is"
    );
    let err = archive::import_rootfs(
        &store,
        &b"this is not a tarball, not at all"[..],
        "linux",
        "amd64",
        None,
        None,
    )
    .unwrap_err();
    println!("import_rootfs(garbage): {err}");
    steps.done("import_rootfs (xz rootfs, SOURCE_DATE_EPOCH-style created)");
    println!("total {:.1}s", steps.total().as_secs_f64());
}

/// A reader that hands out at most 7 bytes per call, as a slow pipe might.
struct Dribble<R>(R);

impl<R: Read> Read for Dribble<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(7);
        self.0.read(&mut buf[..n])
    }
}

/// Every regular file of a (small) tar by name.
fn tar_files(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut r = layer::open_layer(File::open(path).unwrap()).unwrap();
    while let Some(e) = r.next_entry().unwrap() {
        if e.kind == EntryKind::File {
            let mut b = Vec::new();
            r.read_to_end(&mut b).unwrap();
            out.insert(e.path.to_string_lossy().into_owned(), b);
        }
    }
    out
}

/// Copies the entries of `src` that `keep` accepts into a new tar.
fn rewrite_tar(src: &Path, dst: &Path, keep: impl Fn(&str) -> bool) {
    let mut r = layer::open_layer(File::open(src).unwrap()).unwrap();
    let mut w = layer::LayerWriter::new(File::create(dst).unwrap());
    while let Some(e) = r.next_entry().unwrap() {
        if !keep(&e.path.to_string_lossy()) {
            continue;
        }
        if e.kind == EntryKind::File {
            w.append(&e, Some(&mut r)).unwrap();
        } else {
            w.append(&e, None).unwrap();
        }
    }
    w.finish().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hostile archives

/// A tar built by hand, header by header, so it can hold what no well-behaved writer would.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn header(&mut self, name: &str, size: u64, typeflag: u8, link: &str) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let cks = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cks.as_bytes());
        self.0.extend_from_slice(&h);
    }

    fn file(mut self, name: &str, data: &[u8]) -> RawTar {
        self.header(name, data.len() as u64, b'0', "");
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn symlink(mut self, name: &str, target: &str) -> RawTar {
        self.header(name, 0, b'2', target);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A config listing `diff_ids`.
fn config_json(diff_ids: &[&Digest]) -> Vec<u8> {
    let mut c = ImageConfig::new("linux", "amd64");
    for d in diff_ids {
        c.push_layer((*d).clone(), History::default());
    }
    c.to_vec().unwrap()
}

/// Each hostile archive fails with a clear error; the store keeps only verified blobs and
/// gains no tags.
#[test]
fn hostile_archives_are_refused() {
    let mut steps = Steps::new();
    let work = TempRoot::new("exp-hostile");
    let store = Store::open(work.join("store")).unwrap();
    let layer_tar = RawTar::default().file("hello", b"hi\n").finish();
    let layer_id = Digest::of(&layer_tar);
    let good_config = config_json(&[&layer_id]);
    let cfg_name = format!("{}.json", Digest::of(&good_config).hex());
    let manifest = |config: &str, layers: &[&str]| {
        serde_json::to_vec(
            &serde_json::json!([{"Config": config, "RepoTags": ["evil:1"], "Layers": layers}]),
        )
        .unwrap()
    };

    // The well-formed version of the archives below loads, so each failure is its own fault.
    let good = RawTar::default()
        .file(&cfg_name, &good_config)
        .file("l/layer.tar", &layer_tar)
        .file("manifest.json", &manifest(&cfg_name, &["l/layer.tar"]))
        .finish();
    let control = Store::open(work.join("control")).unwrap();
    let loaded = archive::load_archive(&control, &good[..]).expect("well-formed archive loads");
    assert_eq!(loaded[0].names, ["docker.io/library/evil:1"]);

    let wrong_config = config_json(&[&Digest::of(b"something else")]);
    let wrong_name = format!("{}.json", Digest::of(&wrong_config).hex());
    let two_config = config_json(&[&layer_id, &layer_id]);
    let two_name = format!("{}.json", Digest::of(&two_config).hex());
    let oci_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::of(b"{}").as_str(), "size": 2
        }]
    }))
    .unwrap();
    let missing_blob = Digest::of(b"{}").to_string();
    let mut truncated = good.clone();
    truncated.truncate(512 * 4 + 100);

    let cases: Vec<(&str, Box<dyn Read>, &str)> = vec![
        (
            "entry ../escape",
            Box::new(io::Cursor::new(
                RawTar::default().file("../escape", b"x").finish(),
            )),
            "../escape",
        ),
        (
            "manifest.json Layers [../../etc/passwd]",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&cfg_name, &good_config)
                    .file("manifest.json", &manifest(&cfg_name, &["../../etc/passwd"]))
                    .finish(),
            )),
            "../../etc/passwd",
        ),
        (
            "manifest.json Layers [/etc/passwd]",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&cfg_name, &good_config)
                    .file("manifest.json", &manifest(&cfg_name, &["/etc/passwd"]))
                    .finish(),
            )),
            "/etc/passwd",
        ),
        (
            "symlink layer.tar -> ../../etc/passwd",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&cfg_name, &good_config)
                    .symlink("l/layer.tar", "../../etc/passwd")
                    .file("manifest.json", &manifest(&cfg_name, &["l/layer.tar"]))
                    .finish(),
            )),
            "outside the archive",
        ),
        (
            "manifest.json names a missing layer",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&cfg_name, &good_config)
                    .file("manifest.json", &manifest(&cfg_name, &["nope/layer.tar"]))
                    .finish(),
            )),
            "nope/layer.tar",
        ),
        (
            "layer sha256 differs from diff_ids",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&wrong_name, &wrong_config)
                    .file("l/layer.tar", &layer_tar)
                    .file("manifest.json", &manifest(&wrong_name, &["l/layer.tar"]))
                    .finish(),
            )),
            "l/layer.tar",
        ),
        (
            "config lists 2 diffIDs, manifest.json 1 layer",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file(&two_name, &two_config)
                    .file("l/layer.tar", &layer_tar)
                    .file("manifest.json", &manifest(&two_name, &["l/layer.tar"]))
                    .finish(),
            )),
            "diffIDs",
        ),
        (
            "archive truncated mid-entry",
            Box::new(io::Cursor::new(truncated)),
            "l/layer.tar",
        ),
        (
            "100 MB manifest.json",
            {
                let mut header = RawTar::default();
                header.header("manifest.json", 100 << 20, b'0', "");
                Box::new(io::Cursor::new(header.0).chain(io::repeat(b' ').take(100 << 20)))
            },
            "manifest.json",
        ),
        (
            "OCI blob whose content does not match its name",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                    .file(
                        &format!("blobs/sha256/{}", Digest::of(b"{}").hex()),
                        b"{\"x\":1}",
                    )
                    .file("index.json", &oci_index)
                    .finish(),
            )),
            "blobs/sha256/",
        ),
        (
            "OCI index.json naming a blob the archive lacks",
            Box::new(io::Cursor::new(
                RawTar::default()
                    .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                    .file("index.json", &oci_index)
                    .finish(),
            )),
            &missing_blob,
        ),
        (
            "not a tar at all",
            Box::new(io::Cursor::new(b"\x1f\x8bnot really gzip".to_vec())),
            "",
        ),
        ("empty input", Box::new(io::empty()), "not an image archive"),
    ];

    let tags_before = store.tags().unwrap();
    for (what, input, must_mention) in cases {
        let t = Instant::now();
        let err = archive::load_archive(&store, input).expect_err(what);
        let msg = err.to_string();
        println!("{what}: {msg} ({:?})", t.elapsed());
        assert!(
            msg.contains(must_mention),
            "{what}: error should mention {must_mention:?}: {msg}"
        );
        assert!(t.elapsed().as_secs() < 5, "{what} took {:?}", t.elapsed());
    }
    assert_eq!(
        store.tags().unwrap(),
        tags_before,
        "a failed load must not tag anything"
    );
    for d in store.blobs().unwrap() {
        assert!(store.verify_blob(&d).unwrap(), "{d} is damaged");
    }
    let leftovers = fs::read_dir(store.root().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temp files left behind");
    steps.done("13 hostile archives refused; store intact, no tags, no temp files");
}
