//! Push and pull against a real registry (Debian's docker-registry on loopback).

mod common;

use common::{Logged, Registry};
use kiln_oci::digest::Digest;
use kiln_oci::image::{self, ManifestFormat};
use kiln_oci::reference::Reference;
use kiln_oci::{layer, Compression, ImageConfig, Store, TarEntry};
use kiln_registry::{Client, Credentials, Platform, RegistryError};

/// A store with one two-layer image (one layer gzip, one uncompressed and over a MiB, so the
/// streaming paths see several buffers). Returns the store's temp dir, the store and the
/// written image.
fn image_store(format: ManifestFormat) -> (tempfile::TempDir, Store, image::WrittenImage) {
    image_store_with(format, 1_500_000, 0)
}

/// Like [`image_store`], with a big layer holding `big_len` bytes; `seed` makes the content
/// (and so every digest) differ between images.
fn image_store_with(
    format: ManifestFormat,
    big_len: u32,
    seed: u32,
) -> (tempfile::TempDir, Store, image::WrittenImage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    let small = layer::write_layer(&store, Compression::GZIP, |w| {
        let data = format!("hello from kiln {seed}\n");
        w.append(
            &TarEntry::file("hello.txt", data.len() as u64),
            Some(&mut data.as_bytes()),
        )
    })
    .expect("write layer");
    // Deterministic but incompressible-looking content.
    let big: Vec<u8> = (0..big_len)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
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

/// The config and layer digests of `written`.
fn blobs_of(written: &image::WrittenImage) -> Vec<Digest> {
    let m = image::parse_manifest(written.manifest_bytes.clone()).expect("parse manifest");
    std::iter::once(m.value.config())
        .chain(m.value.layers())
        .map(digest_of)
        .collect()
}

/// Requests to `repo`'s upload endpoint, once the PUT of its manifest `tag` is logged.
fn uploads_to(reg: &Registry, repo: &str, tag: &str) -> Vec<Logged> {
    let manifest = format!("/v2/{repo}/manifests/{tag}");
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    reg.requests_until(|r| r.method == "PUT" && r.path() == manifest)
        .into_iter()
        .filter(|r| r.path().starts_with(&prefix))
        .collect()
}

/// Pulls `reference` into a new store and checks the manifest and every blob byte for byte
/// against `src`.
fn pull_and_compare(
    client: &Client,
    src: &Store,
    written: &image::WrittenImage,
    reference: &Reference,
) -> (tempfile::TempDir, Store) {
    let (dir, dst) = empty_store();
    let pulled = client.pull(&dst, reference, &amd64()).expect("pull");
    assert_eq!(pulled.digest, digest_of(&written.manifest));
    let m = image::read_manifest(&dst, &pulled.digest).expect("read pulled manifest");
    assert_eq!(m.bytes, written.manifest_bytes);
    for d in blobs_of(written) {
        assert!(dst.verify_blob(&d).expect("verify"), "{d}");
        let ours = std::fs::read(src.blob_path(&d)).expect("read source blob");
        let theirs = std::fs::read(dst.blob_path(&d)).expect("read pulled blob");
        assert!(ours == theirs, "blob {d} differs after the round trip");
    }
    (dir, dst)
}

#[test]
fn a_second_repository_gets_every_blob_by_mount() {
    let Some(reg) = Registry::start() else { return };
    let client = Client::new();
    let (_src_dir, src, written) = image_store(ManifestFormat::Oci);
    let manifest_digest = digest_of(&written.manifest);
    let blobs = blobs_of(&written);
    let a = Reference::parse(&reg.image("team/a:1")).expect("reference");
    let b = Reference::parse(&reg.image("team/b:1")).expect("reference");

    let first = client.push(&src, &manifest_digest, &a).expect("push to a");
    assert_eq!((first.blobs_uploaded, first.blobs_mounted), (3, 0));
    // The store now knows where each blob lives.
    for d in &blobs {
        assert_eq!(
            src.blob_origins(d).expect("origins"),
            [format!("{}/team/a", reg.addr())]
        );
    }

    let second = client.push(&src, &manifest_digest, &b).expect("push to b");
    assert_eq!(second.digest, manifest_digest);
    assert_eq!(second.blobs_uploaded, 0, "{second:?}");
    assert_eq!(second.bytes_uploaded, 0);
    assert_eq!(second.blobs_mounted, 3, "{second:?}");
    assert_eq!(second.bytes_mounted, first.bytes_uploaded);
    assert_eq!(second.blobs_present, 0);

    // The registry's own log: three mounts from team/a, each answered 201, and nothing else
    // sent to b's upload endpoint (no PATCH, no PUT).
    let to_b = uploads_to(&reg, "team/b", "1");
    assert_eq!(to_b.len(), 3, "{to_b:#?}");
    for r in &to_b {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(r.status, 201, "{r:?}");
        assert!(r.target.contains("from=team%2Fa"), "{r:?}");
    }
    for d in &blobs {
        let mount = format!("mount=sha256%3A{}", d.hex());
        assert!(to_b.iter().any(|r| r.target.contains(&mount)), "{d}");
    }
    let (_dst_dir, dst) = pull_and_compare(&client, &src, &written, &b);

    // A pull records its repository too: pushing what was pulled from b to c mounts from b.
    let c = Reference::parse(&reg.image("team/c:1")).expect("reference");
    let third = client.push(&dst, &manifest_digest, &c).expect("push to c");
    assert_eq!((third.blobs_uploaded, third.blobs_mounted), (0, 3));
    let to_c = uploads_to(&reg, "team/c", "1");
    assert!(
        to_c.iter()
            .all(|r| r.target.contains("from=team%2Fb") && r.status == 201),
        "{to_c:#?}"
    );

    // Pushing again to b: HEAD finds everything, nothing is mounted or sent.
    let again = client.push(&src, &manifest_digest, &b).expect("push again");
    assert_eq!(
        (
            again.blobs_present,
            again.blobs_mounted,
            again.blobs_uploaded
        ),
        (3, 0, 0)
    );
}

#[test]
fn a_stale_origin_falls_back_to_uploading_through_the_offered_session() {
    let Some(reg) = Registry::start() else { return };
    let client = Client::new();
    let (_src_dir, src, written) = image_store_with(ManifestFormat::Docker, 200_000, 7);
    let manifest_digest = digest_of(&written.manifest);
    // The store believes the blobs are in a repository the registry has never seen.
    let ghost = format!("{}/ghost/repo", reg.addr());
    for d in blobs_of(&written) {
        src.remember_blob_origin(&d, &ghost).expect("remember");
    }
    let d = Reference::parse(&reg.image("team/d:1")).expect("reference");
    let pushed = client.push(&src, &manifest_digest, &d).expect("push");
    assert_eq!((pushed.blobs_uploaded, pushed.blobs_mounted), (3, 0));

    // Each blob: a mount attempt answered 202, then the PUT into that very session; no second
    // POST.
    let to_d = uploads_to(&reg, "team/d", "1");
    let posts: Vec<&Logged> = to_d.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 3, "{to_d:#?}");
    assert!(
        posts
            .iter()
            .all(|r| r.status == 202 && r.target.contains("from=ghost%2Frepo")),
        "{posts:#?}"
    );
    let puts = to_d.iter().filter(|r| r.method == "PUT" && r.status == 201);
    assert_eq!(puts.count(), 3, "{to_d:#?}");
    pull_and_compare(&client, &src, &written, &d);
    // The registry is now the blobs' most recent origin; the ghost stays behind it.
    let origins = src.blob_origins(&blobs_of(&written)[0]).expect("origins");
    assert_eq!(origins, [format!("{}/team/d", reg.addr()), ghost]);
}

#[test]
fn a_large_blob_goes_up_in_chunks_and_comes_back_byte_exact() {
    let Some(reg) = Registry::start() else { return };
    const CHUNK: u64 = 64 << 10;
    let client = Client::new().with_chunk_size(CHUNK);
    // 3 MiB and a bit: the last chunk is a partial one.
    let (_src_dir, src, written) = image_store_with(ManifestFormat::Oci, (3 << 20) + 12_345, 3);
    let manifest_digest = digest_of(&written.manifest);
    let big = blobs_of(&written)[2].clone();
    let big_size = src.blob_size(&big).expect("size");
    assert!(big_size > 3 << 20);
    let reference = Reference::parse(&reg.image("chunky:1")).expect("reference");

    let pushed = client
        .push(&src, &manifest_digest, &reference)
        .expect("push");
    assert_eq!(pushed.digest, manifest_digest);
    assert_eq!(pushed.blobs_uploaded, 3);

    // The big layer in 64 KiB PATCHes, then a closing PUT; the config and small layer (under
    // a chunk) in one PUT each. (This registry ignores Content-Range, so the ranges themselves
    // are checked against the scripted server in fake.rs.)
    let uploads = uploads_to(&reg, "chunky", "1");
    let patches: Vec<&Logged> = uploads.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(
        patches.len() as u64,
        big_size.div_ceil(CHUNK),
        "{uploads:#?}"
    );
    assert!(patches.iter().all(|r| r.status == 202), "{patches:#?}");
    let puts: Vec<&Logged> = uploads.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 3);
    assert!(puts.iter().all(|r| r.status == 201), "{puts:#?}");
    assert!(
        puts.iter()
            .any(|r| r.target.contains(&format!("digest=sha256%3A{}", big.hex()))),
        "{puts:#?}"
    );

    pull_and_compare(&client, &src, &written, &reference);
}
