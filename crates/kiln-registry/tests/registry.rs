//! Push and pull against a real registry (Debian's docker-registry on loopback).

mod common;

use common::Registry;
use kiln_oci::digest::Digest;
use kiln_oci::image::{self, ManifestFormat};
use kiln_oci::reference::Reference;
use kiln_oci::{layer, Compression, ImageConfig, Store, TarEntry};
use kiln_registry::{Client, Credentials, Platform, RegistryError};

/// A store with one two-layer image (one layer gzip, one uncompressed and over a MiB, so the
/// streaming paths see several buffers). Returns the store's temp dir, the store and the
/// written image.
fn image_store(format: ManifestFormat) -> (tempfile::TempDir, Store, image::WrittenImage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    let small = layer::write_layer(&store, Compression::GZIP, |w| {
        let data = b"hello from kiln\n";
        w.append(
            &TarEntry::file("hello.txt", data.len() as u64),
            Some(&mut &data[..]),
        )
    })
    .expect("write layer");
    // Deterministic but incompressible-looking content.
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let large = layer::write_layer(&store, Compression::None, |w| {
        w.append(
            &TarEntry::file("big.bin", big.len() as u64),
            Some(&mut &big[..]),
        )
    })
    .expect("write layer");
    let mut config = ImageConfig::new("linux", "amd64");
    config.push_layer(small.diff_id.clone(), image::History::default());
    config.push_layer(large.diff_id.clone(), image::History::default());
    let written = image::write_image(
        &store,
        &config,
        &[small.descriptor(), large.descriptor()],
        None,
        format,
    )
    .expect("write image");
    (dir, store, written)
}

fn digest_of(d: &oci_spec::image::Descriptor) -> Digest {
    Digest::from_oci(d.digest()).expect("sha256 digest")
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64")
}

fn empty_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

fn check_roundtrip(client: &Client, reg: &Registry, format: ManifestFormat, name: &str) {
    let (_src_dir, src, written) = image_store(format);
    let manifest_digest = digest_of(&written.manifest);
    let reference = Reference::parse(&reg.image(name)).expect("reference");

    let pushed = client
        .push(&src, &manifest_digest, &reference)
        .expect("push");
    assert_eq!(pushed.digest, manifest_digest);
    assert_eq!(pushed.blobs_uploaded, 3, "config and two layers");
    assert!(pushed.bytes_uploaded > 1_500_000);

    // The registry now has every blob: a second push sends only the manifest.
    let again = client
        .push(&src, &manifest_digest, &reference)
        .expect("push again");
    assert_eq!(again.digest, manifest_digest);
    assert_eq!(again.blobs_uploaded, 0);

    let (_dst_dir, dst) = empty_store();
    let pulled = client.pull(&dst, &reference, &amd64()).expect("pull");
    assert_eq!(pulled.digest, manifest_digest);
    assert_eq!(pulled.blobs_fetched, 3);
    assert_eq!(pulled.bytes_fetched, pushed.bytes_uploaded);
    assert_eq!(
        pulled.descriptor.media_type().to_string(),
        format.manifest_media_type()
    );
    // Exact bytes, same config, every blob intact.
    let m = image::read_manifest(&dst, &manifest_digest).expect("read pulled manifest");
    assert_eq!(m.bytes, written.manifest_bytes);
    assert_eq!(m.value.config().digest(), written.config.digest());
    for d in std::iter::once(m.value.config()).chain(m.value.layers()) {
        assert!(dst.verify_blob(&digest_of(d)).expect("verify"), "{d:?}");
    }
    let tagged = dst
        .resolve(&reference.to_string())
        .expect("index")
        .expect("tag set");
    assert_eq!(digest_of(&tagged), manifest_digest);

    // Nothing new to fetch the second time.
    let second = client.pull(&dst, &reference, &amd64()).expect("pull again");
    assert_eq!(second.digest, manifest_digest);
    assert_eq!(second.blobs_fetched, 0);
    assert_eq!(second.bytes_fetched, 0);

    // By digest too.
    let by_digest = Reference::parse(&reg.image(&format!(
        "{}@{manifest_digest}",
        name.split(':').next().unwrap_or(name)
    )))
    .expect("digest reference");
    let (_d3, third) = empty_store();
    let pulled = client
        .pull(&third, &by_digest, &amd64())
        .expect("pull by digest");
    assert_eq!(pulled.digest, manifest_digest);
}

#[test]
fn push_then_pull_round_trips_oci_and_docker_images() {
    let Some(reg) = Registry::start() else { return };
    let client = Client::new();
    client.ping(&reg.addr()).expect("ping");
    check_roundtrip(&client, &reg, ManifestFormat::Oci, "kiln/oci:1");
    check_roundtrip(&client, &reg, ManifestFormat::Docker, "kiln/docker:1");
}

#[test]
fn pulling_a_missing_tag_is_a_clear_not_found() {
    let Some(reg) = Registry::start() else { return };
    let client = Client::new();
    let reference = Reference::parse(&reg.image("nothing/here:nope")).expect("reference");
    let (_d, store) = empty_store();
    let err = client
        .pull(&store, &reference, &amd64())
        .expect_err("missing tag must fail");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&reference.to_string()), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    assert!(store.tags().expect("tags").is_empty());
}

#[test]
fn basic_auth_registry_needs_the_right_credentials() {
    let Some(reg) = Registry::with_auth("kiln", "s3cret") else {
        return;
    };
    let (_src_dir, src, written) = image_store(ManifestFormat::Oci);
    let manifest_digest = digest_of(&written.manifest);
    let reference = Reference::parse(&reg.image("private/app:1")).expect("reference");

    // No credentials: refused, and told to log in.
    let anonymous = Client::new();
    let err = anonymous
        .push(&src, &manifest_digest, &reference)
        .expect_err("anonymous push must fail");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("kiln login {}", reg.addr())), "{msg}");
    assert!(msg.contains(&reference.to_string()), "{msg}");
    assert!(anonymous.ping(&reg.addr()).is_err());

    // Right credentials: push and pull work.
    let good = Client::new().with_credentials(&reg.addr(), Credentials::new("kiln", "s3cret"));
    good.ping(&reg.addr()).expect("ping with credentials");
    let pushed = good.push(&src, &manifest_digest, &reference).expect("push");
    assert_eq!(pushed.digest, manifest_digest);
    let (_d, dst) = empty_store();
    let pulled = good.pull(&dst, &reference, &amd64()).expect("pull");
    assert_eq!(pulled.digest, manifest_digest);
    assert_eq!(pulled.blobs_fetched, 3);

    // Anonymous pull of the now existing image is refused too.
    let (_d2, other) = empty_store();
    let err = anonymous
        .pull(&other, &reference, &amd64())
        .expect_err("anonymous pull must fail");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    // Wrong password: refused, and the message says the credentials are the problem.
    let bad = Client::new().with_credentials(&reg.addr(), Credentials::new("kiln", "wrong"));
    let err = bad
        .pull(&other, &reference, &amd64())
        .expect_err("wrong password must fail");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("wrong"),
        "the password must not appear: {msg}"
    );
    assert!(other.tags().expect("tags").is_empty());
}
