//! Every document kiln writes (manifest, config, index.json, oci-layout, image index) is valid
//! against the OCI image-spec v1.1.1 JSON schemas. The validator itself is first checked
//! against the upstream test vectors, so a pass means something.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::OciSchemas;
use kiln_oci::image::{self, media_type, HealthConfig, History, ManifestFormat};
use kiln_oci::{layer, Compression, Digest, ImageConfig, Store, TarEntry};
use serde_json::Value;

const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYOUT: &str = "application/vnd.oci.layout.header.v1+json";

#[test]
fn validator_agrees_with_upstream_vectors() {
    let schemas = OciSchemas::new();
    let dir = common::corpus_dir().join("oci-image-spec-schema/test-vectors");
    let (mut passed, mut total, mut misses) = (0, 0, Vec::new());
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let v: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        let mt = v["validator_media_type"].as_str().unwrap();
        let convert = v["convert_before_validating"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for case in v["cases"].as_array().unwrap() {
            let mut doc = case["document"].as_str().unwrap().to_owned();
            for (from, to) in &convert {
                doc = doc.replace(from.as_str(), to.as_str().unwrap());
            }
            let want_fail = case["fail"].as_bool().unwrap_or(false);
            let got = schemas.validate(mt, doc.as_bytes());
            total += 1;
            if got.is_err() == want_fail {
                passed += 1;
            } else {
                misses.push(format!(
                    "{}: {:?} expected fail={want_fail}, got {got:?}",
                    file.file_name().unwrap().to_string_lossy(),
                    case["comment"]
                ));
            }
        }
    }
    println!("{passed}/{total} schema vectors agree with upstream");
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

#[test]
fn spec_examples_validate_and_survive_oci_spec_parsing() {
    let schemas = OciSchemas::new();
    let dir = common::corpus_dir().join("oci-image-spec-schema/spec-examples");
    let index: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let mut n = 0;
    for ex in index["examples"].as_array().unwrap() {
        let bytes = fs::read(dir.join(ex["file"].as_str().unwrap())).unwrap();
        let mt = ex["mediatype"].as_str().unwrap();
        schemas
            .validate(mt, &bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", ex["file"]));
        // Parsing keeps the exact bytes; re-serializing canonically still validates.
        let canonical = match mt {
            media_type::OCI_MANIFEST => {
                let p = image::parse_manifest(bytes.clone()).unwrap();
                assert_eq!(p.bytes, bytes);
                image::manifest_to_vec(&p.value).unwrap()
            }
            media_type::OCI_INDEX => {
                image::index_to_vec(&image::parse_index(bytes).unwrap().value).unwrap()
            }
            CONFIG => image::parse_config(bytes).unwrap().value.to_vec().unwrap(),
            _ => continue,
        };
        schemas
            .validate(mt, &canonical)
            .unwrap_or_else(|e| panic!("{} re-serialized: {e}", ex["file"]));
        n += 1;
    }
    println!("{n} spec examples re-serialized and validated");
    assert!(n >= 5);
}

/// A config using every field kiln models, as a Dockerfile build would produce.
fn full_config(diff_ids: &[Digest]) -> ImageConfig {
    let mut c = ImageConfig::new("linux", "amd64");
    c.created = Some("2024-05-06T07:08:09Z".into());
    c.author = Some("kiln tests".into());
    let cc = c.config_mut();
    cc.user = Some("1000:1000".into());
    cc.env = Some(vec!["PATH=/usr/local/bin:/usr/bin".into(), "EMPTY=".into()]);
    cc.entrypoint = Some(vec!["/entry.sh".into()]);
    cc.cmd = Some(vec![]);
    cc.working_dir = Some("/app".into());
    cc.exposed_ports = Some([("80/tcp".to_owned(), Default::default())].into());
    cc.volumes = Some([("/data".to_owned(), Default::default())].into());
    cc.labels = Some([("org.opencontainers.image.title".to_owned(), "t".to_owned())].into());
    cc.stop_signal = Some("SIGTERM".into());
    cc.args_escaped = true;
    cc.healthcheck = Some(HealthConfig {
        test: Some(vec!["CMD-SHELL".into(), "true".into()]),
        interval: Some(30_000_000_000),
        timeout: Some(5_000_000_000),
        start_period: Some(0),
        start_interval: Some(1_000_000_000),
        retries: Some(3),
    });
    cc.on_build = Some(vec!["RUN echo hi".into()]);
    cc.shell = Some(vec!["/bin/sh".into(), "-c".into()]);
    for d in diff_ids {
        c.push_layer(
            d.clone(),
            History {
                created_by: Some("COPY . /app".into()),
                ..History::default()
            },
        );
    }
    c.push_empty_layer(History {
        created_by: Some("CMD []".into()),
        comment: Some("buildkit.dockerfile.v0".into()),
        ..History::default()
    });
    c
}

#[test]
fn everything_we_write_is_schema_valid() {
    let schemas = OciSchemas::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    schemas
        .validate(LAYOUT, &fs::read(dir.path().join("oci-layout")).unwrap())
        .unwrap();
    schemas
        .validate(
            media_type::OCI_INDEX,
            &fs::read(dir.path().join("index.json")).unwrap(),
        )
        .expect("empty index.json");

    let mut layers = Vec::new();
    for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
        let info = layer::write_layer(&store, c, |w| {
            w.append(&TarEntry::dir("app"), None)?;
            w.append(&TarEntry::file("app/x", 2), Some(&mut &b"hi"[..]))
        })
        .unwrap();
        layers.push(info);
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let descs: Vec<_> = layers.iter().map(|l| l.descriptor()).collect();
    let config = full_config(&diff_ids);
    let annotations: BTreeMap<String, String> = [(
        "org.opencontainers.image.created".to_owned(),
        "2024-05-06T07:08:09Z".to_owned(),
    )]
    .into();
    let img = image::write_image(
        &store,
        &config,
        &descs,
        Some(&annotations),
        ManifestFormat::Oci,
    )
    .unwrap();
    schemas
        .validate(media_type::OCI_MANIFEST, &img.manifest_bytes)
        .unwrap();
    schemas.validate(CONFIG, &img.config_bytes).unwrap();
    let desc_bytes = serde_json::to_vec(&img.manifest).unwrap();
    schemas
        .validate("application/vnd.oci.descriptor.v1+json", &desc_bytes)
        .unwrap();

    // The Docker dialect, checked the way upstream checks Docker documents: with media types
    // translated to their OCI equivalents first.
    let gz_only: Vec<_> = descs[1..2].to_vec();
    let docker_cfg = full_config(&diff_ids[1..2]);
    let dimg =
        image::write_image(&store, &docker_cfg, &gz_only, None, ManifestFormat::Docker).unwrap();
    let translated = String::from_utf8(dimg.manifest_bytes.clone())
        .unwrap()
        .replace(media_type::DOCKER_MANIFEST, media_type::OCI_MANIFEST)
        .replace(media_type::DOCKER_CONFIG, media_type::OCI_CONFIG)
        .replace(media_type::DOCKER_LAYER_GZIP, media_type::OCI_LAYER_GZIP);
    schemas
        .validate(media_type::OCI_MANIFEST, translated.as_bytes())
        .unwrap();

    store
        .set_tag("docker.io/library/app:1", &img.manifest)
        .unwrap();
    store
        .set_tag("docker.io/library/app:docker", &dimg.manifest)
        .unwrap();
    schemas
        .validate(
            media_type::OCI_INDEX,
            &fs::read(dir.path().join("index.json")).unwrap(),
        )
        .unwrap();

    let mut with_platform = img.manifest.clone();
    with_platform.set_platform(Some(
        oci_spec::image::PlatformBuilder::default()
            .architecture(oci_spec::image::Arch::Amd64)
            .os(oci_spec::image::Os::Linux)
            .os_version("6.1".to_owned())
            .build()
            .unwrap(),
    ));
    let idx = image::build_index(vec![with_platform], Some(&annotations)).unwrap();
    let idx_bytes = image::index_to_vec(&idx).unwrap();
    assert!(String::from_utf8_lossy(&idx_bytes).contains(r#""os.version":"6.1""#));
    schemas.validate(media_type::OCI_INDEX, &idx_bytes).unwrap();
}
