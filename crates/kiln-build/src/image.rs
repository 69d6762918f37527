//! An image while it is being built: its config, its layers, and a lazily built view of its
//! filesystem.

use crate::copy::{Content, Planned, SourceTree, SrcNode};
use crate::rootfs::{Kind, Node, Origin, Rootfs};
use kiln_dockerfile::stages::Platform;
use kiln_oci::digest::Digest;
use kiln_oci::image::{
    self as oci_image, ContainerConfig, HealthConfig, History, ImageConfig, ManifestFormat,
};
use kiln_oci::layer::{EntryKind, TarEntry};
use kiln_oci::reference::Reference;
use kiln_oci::store::Store;
use kiln_oci::Compression;
use oci_spec::image::Descriptor;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest `/etc/passwd` or `/etc/group` we read for name lookups.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// Why an image could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The named image is not in the store.
    #[error("image {0} not found in the store")]
    NotFound(String),
    /// The name is not a valid reference.
    #[error(transparent)]
    Reference(#[from] kiln_oci::reference::ReferenceError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_oci::store::StoreError),
    /// Reading or writing image metadata failed.
    #[error(transparent)]
    Oci(#[from] oci_image::ImageError),
    /// Reading or writing a layer failed.
    #[error(transparent)]
    Layer(#[from] kiln_oci::layer::LayerError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Something about the image is not supported.
    #[error("{0}")]
    Unsupported(String),
}

impl ImageError {
    /// A hint for the user, when there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            ImageError::NotFound(_) => Some(
                "pull it with `kiln pull NAME` (or build with --pull=missing), bring it in with \
                 `kiln load -i image.tar`, or name an archive directly: FROM oci-archive:PATH, \
                 docker-archive:PATH or oci:DIR[:tag]"
                    .into(),
            ),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of the image: as the manifest lists it, and as an uncompressed tar in the store.
#[derive(Clone, Debug)]
struct LayerRef {
    descriptor: Descriptor,
    diff_id: Digest,
}

/// Temporary files that must outlive the planning of a step (downloads, decompressed
/// archives); removed when the last state holding them goes away.
#[derive(Debug, Default)]
struct Temps(std::sync::Mutex<Vec<PathBuf>>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in self.0.get_mut().map(std::mem::take).unwrap_or_default() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An image being built.
#[derive(Clone, Debug)]
pub struct ImageState {
    /// The image config.
    pub config: Config,
    layers: Vec<LayerRef>,
    rootfs: Option<Rootfs>,
    temps: Arc<Temps>,
    /// Time of the newest step this build added (its history entry's time).
    newest: Option<(i64, u32)>,
}

impl ImageState {
    /// `FROM scratch`: no layers, an empty config for `platform`.
    pub fn scratch(platform: &Platform) -> ImageState {
        let config = ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            rootfs: oci_image::RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            ..ImageConfig::default()
        };
        ImageState {
            config: Config(config),
            layers: Vec::new(),
            rootfs: None,
            temps: Arc::default(),
            newest: None,
        }
    }

    /// Keeps a temporary file alive as long as this state (or a clone) lives.
    pub fn keep_temp(&mut self, path: PathBuf) {
        if let Ok(mut v) = self.temps.0.lock() {
            v.push(path);
        }
    }

    /// The filesystem view, built from the layers on first use.
    pub fn rootfs(&mut self, store: &Store) -> Result<&Rootfs, ImageError> {
        if self.rootfs.is_none() {
            let mut fs = Rootfs::new();
            for (i, layer) in self.layers.iter().enumerate() {
                let tar = uncompressed_layer(store, layer)?;
                for (path, node) in index_tar(&tar)? {
                    fs.apply(i, &path, to_rootfs_node(node, i));
                }
            }
            self.rootfs = Some(fs);
        }
        Ok(self.rootfs.as_ref().expect("just built"))
    }

    /// Reads a small file (`/etc/passwd`) from the image, following symlinks inside it.
    pub fn read_file(&mut self, store: &Store, path: &str) -> Result<Option<String>, ImageError> {
        let fs = self.rootfs(store)?;
        let Ok(resolved) = fs.resolve(path, true) else {
            return Ok(None);
        };
        let Some(node) = fs.get(&resolved) else {
            return Ok(None);
        };
        let (Kind::File, Origin::Slice { file, offset }) = (&node.kind, &node.origin) else {
            return Ok(None);
        };
        let len = node.size.min(MAX_ACCOUNT_FILE);
        let mut f = File::open(file.as_ref()).map_err(io_err(file))?;
        f.seek(SeekFrom::Start(*offset)).map_err(io_err(file))?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut buf).map_err(io_err(file))?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// The image's filesystem as a COPY source (`COPY --from`).
    pub fn source_tree(&mut self, store: &Store) -> Result<SourceTree, ImageError> {
        let fs = self.rootfs(store)?;
        let root = fs
            .get("")
            .cloned()
            .unwrap_or_else(|| Node::new_dir(0o755, 0, 0, (0, 0)));
        let mut tree = SourceTree::new(to_src_node(&root, None));
        for (path, node) in fs.children("") {
            // A hard link is copied as the file it names; two names of one file stay linked.
            let (content_node, key) = match &node.kind {
                Kind::Hardlink(target) => match fs.get(&crate::rootfs::clean(target)) {
                    Some(t) => (t.clone(), Some(link_key(target))),
                    None => continue,
                },
                Kind::File => (node.clone(), Some(link_key(path))),
                _ => (node.clone(), None),
            };
            let mut src = to_src_node(&content_node, key);
            src.mode = node.mode;
            tree.insert(path, src);
        }
        Ok(tree)
    }

    /// Writes `entries` as a new layer and records it in the config and history.
    pub fn add_layer(
        &mut self,
        store: &Store,
        entries: &[Planned],
        source_date_epoch: Option<i64>,
        now: (i64, u32),
        created_by: &str,
    ) -> Result<kiln_oci::layer::LayerInfo, ImageError> {
        let info = kiln_oci::layer::write_layer(store, Compression::None, |w| {
            w.set_clamp_mtime(source_date_epoch);
            for p in entries {
                write_planned(w, p)?;
            }
            Ok(())
        })?;
        self.push_layer(store, info.clone(), source_date_epoch, now, created_by)?;
        Ok(info)
    }

    /// The time of the newest step added by this build, if any.
    pub fn newest_step(&self) -> Option<(i64, u32)> {
        self.newest
    }

    fn note_step(&mut self, now: (i64, u32)) {
        self.newest = Some(self.newest.map_or(now, |n| n.max(now)));
    }

    /// A cache key for this image as a base: its config and layers.
    pub fn content_key(&self) -> Result<Digest, ImageError> {
        let config = self.config.0.to_vec().map_err(|e| {
            ImageError::Unsupported(format!("serializing the base image's config: {e}"))
        })?;
        let diff_ids: String = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        Ok(crate::cache::base_key(
            "image",
            &[config.as_slice(), diff_ids.as_bytes()],
        ))
    }

    /// Adds a layer already in the store (written by the step) to the image: config, history,
    /// and the filesystem view.
    pub fn push_layer(
        &mut self,
        store: &Store,
        info: kiln_oci::layer::LayerInfo,
        source_date_epoch: Option<i64>,
        now: (i64, u32),
        created_by: &str,
    ) -> Result<(), ImageError> {
        let descriptor = oci_image::descriptor(
            kiln_oci::image::media_type::OCI_LAYER,
            &info.digest,
            info.size,
        );
        self.layers.push(LayerRef {
            descriptor,
            diff_id: info.diff_id.clone(),
        });
        self.config.0.rootfs.diff_ids.push(info.diff_id);
        self.note_step(now);
        self.config.0.history.push(History {
            created: Some(timestamp(source_date_epoch, now)),
            created_by: Some(created_by.to_string()),
            comment: Some("buildkit.dockerfile.v0".into()),
            ..History::default()
        });
        let i = self.layers.len() - 1;
        if let Some(fs) = &mut self.rootfs {
            let tar = store.blob_path(&self.layers[i].diff_id);
            for (path, node) in index_tar(&tar)? {
                fs.apply(i, &path, to_rootfs_node(node, i));
            }
        }
        Ok(())
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Merges layers `from..` into one (`--squash`: the layers this build added; with `from`
    /// 0, `--squash-all`). Deletions of lower files stay whiteouts, a directory deleted and
    /// made again becomes opaque; the history entries of the merged layers become empty ones
    /// and one entry for the new layer is added.
    pub fn squash(
        &mut self,
        store: &Store,
        from: usize,
        source_date_epoch: Option<i64>,
        now: (i64, u32),
    ) -> Result<(), ImageError> {
        let merged_count = self.layers.len().saturating_sub(from);
        // --squash of one new layer changes nothing; --squash-all still rewrites a lone layer
        // (its history becomes the squash entry).
        let least = if from == 0 { 1 } else { 2 };
        if merged_count < least {
            return Ok(());
        }
        // path -> what the merged layer holds there.
        let mut out: BTreeMap<String, Squashed> = BTreeMap::new();
        let remove_below = |out: &mut BTreeMap<String, Squashed>, dir: &str| {
            let prefix = format!("{dir}/");
            out.retain(|k, _| !k.starts_with(&prefix));
        };
        for layer in &self.layers[from..] {
            let tar = uncompressed_layer(store, layer)?;
            for (path, node) in index_tar(&tar)? {
                let path = crate::rootfs::clean(&path);
                let (dir, name) = match path.rfind('/') {
                    Some(i) => (path[..i].to_owned(), path[i + 1..].to_owned()),
                    None => (String::new(), path.clone()),
                };
                if name == ".wh..wh..opq" {
                    remove_below(&mut out, &dir);
                    match out.get_mut(&dir) {
                        Some(Squashed::Node(_, opaque)) => *opaque = true,
                        // With --squash-all there is nothing below to hide.
                        _ if from == 0 => {}
                        _ => {
                            out.insert(format!("{dir}/.wh..wh..opq"), Squashed::Opaque);
                        }
                    }
                    continue;
                }
                if let Some(victim) = name.strip_prefix(".wh.") {
                    let target = if dir.is_empty() {
                        victim.to_owned()
                    } else {
                        format!("{dir}/{victim}")
                    };
                    remove_below(&mut out, &target);
                    // Only the base (or nothing, with --squash-all) can still hold it.
                    if from == 0 {
                        out.remove(&target);
                    } else {
                        out.insert(target, Squashed::Whiteout);
                    }
                    continue;
                }
                if path.is_empty() {
                    continue;
                }
                let opaque = match out.get(&path) {
                    // A directory deleted in this run of layers and made again hides what the
                    // base had below it.
                    Some(Squashed::Whiteout) => node.kind == Kind::Dir,
                    Some(Squashed::Node(_, o)) => *o && node.kind == Kind::Dir,
                    _ => false,
                };
                if node.kind != Kind::Dir {
                    remove_below(&mut out, &path);
                }
                out.remove(&format!("{path}/.wh..wh..opq"));
                out.insert(path, Squashed::Node(node, opaque));
            }
        }
        let info = kiln_oci::layer::write_layer(store, Compression::None, |w| {
            w.set_clamp_mtime(source_date_epoch);
            // Hard links go last, so the files they name are written before them.
            let (links, rest): (Vec<_>, Vec<_>) = out.iter().partition(
                |(_, s)| matches!(s, Squashed::Node(n, _) if matches!(n.kind, Kind::Hardlink(_))),
            );
            for (path, item) in rest.into_iter().chain(links) {
                match item {
                    Squashed::Whiteout => w.append(&TarEntry::whiteout(path), None)?,
                    Squashed::Opaque => {
                        let dir = path.trim_end_matches("/.wh..wh..opq");
                        w.append(&TarEntry::opaque_whiteout(dir), None)?
                    }
                    Squashed::Node(node, opaque) => {
                        let p = Planned {
                            path: path.clone(),
                            node: node.clone(),
                        };
                        write_planned(w, &p)?;
                        if *opaque && from > 0 {
                            w.append(&TarEntry::opaque_whiteout(path), None)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        self.layers.truncate(from);
        self.config.0.rootfs.diff_ids.truncate(from);
        let mut seen = 0;
        for h in self.config.0.history.iter_mut() {
            if !h.empty_layer {
                if seen >= from {
                    h.empty_layer = true;
                }
                seen += 1;
            }
        }
        self.rootfs = None;
        let what = if from == 0 {
            "--squash-all"
        } else {
            "--squash"
        };
        let created_by = format!("kiln build {what}: {merged_count} layers merged");
        self.push_layer(store, info, source_date_epoch, now, &created_by)
    }

    /// The diffIDs of the layers, bottom first.    /// The diffIDs of the layers, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The uncompressed tar of layer `i` (decompressed into the store once if needed).
    pub fn layer_tar(&self, store: &Store, i: usize) -> Result<PathBuf, ImageError> {
        uncompressed_layer(store, &self.layers[i])
    }

    /// Records a metadata-only step.
    pub fn add_empty_history(
        &mut self,
        created_by: &str,
        source_date_epoch: Option<i64>,
        now: (i64, u32),
    ) {
        self.note_step(now);
        self.config.0.history.push(History {
            created: Some(timestamp(source_date_epoch, now)),
            created_by: Some(created_by.to_string()),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: true,
            ..History::default()
        });
    }

    /// Writes config and manifest to the store: (manifest digest, manifest size, config digest).
    pub fn commit(&self, store: &Store) -> Result<(Digest, u64, Digest), ImageError> {
        let layers: Vec<Descriptor> = self.layers.iter().map(|l| l.descriptor.clone()).collect();
        let written =
            oci_image::write_image(store, &self.config.0, &layers, None, ManifestFormat::Oci)?;
        let m = Digest::from_oci(written.manifest.digest()).map_err(oci_image::ImageError::from)?;
        let c = Digest::from_oci(written.config.digest()).map_err(oci_image::ImageError::from)?;
        Ok((m, written.manifest.size(), c))
    }
}

fn link_key(path: &str) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crate::rootfs::clean(path).hash(&mut h);
    (u64::MAX, h.finish())
}

fn to_src_node(n: &Node, link_key: Option<(u64, u64)>) -> SrcNode {
    SrcNode {
        kind: n.kind.clone(),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        mtime: n.mtime,
        xattrs: n.xattrs.clone(),
        content: match &n.origin {
            Origin::Slice { file, offset } if n.kind == Kind::File => Content::Slice {
                file: file.to_path_buf(),
                offset: *offset,
            },
            _ => Content::None,
        },
        link_key,
    }
}

fn to_rootfs_node(s: SrcNode, layer: usize) -> Node {
    let origin = match s.content {
        Content::Slice { file, offset } => Origin::Slice {
            file: Arc::from(file.as_path()),
            offset,
        },
        _ => Origin::New,
    };
    Node {
        kind: s.kind,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        mtime: s.mtime,
        xattrs: s.xattrs,
        origin,
        layer,
    }
}

/// What a squashed layer holds at a path.
enum Squashed {
    /// An entry, and whether it is a directory that hides the lower layers' content.
    Node(SrcNode, bool),
    /// A whiteout of a lower path.
    Whiteout,
    /// An opaque marker for a directory the merged layers do not hold themselves.
    Opaque,
}

/// Appends one planned entry with its content.
fn write_planned<W: std::io::Write>(
    w: &mut kiln_oci::layer::LayerWriter<W>,
    p: &Planned,
) -> Result<(), kiln_oci::layer::LayerError> {
    let entry = to_tar_entry(p);
    let content = |source| kiln_oci::layer::LayerError::Content {
        path: p.path.clone(),
        source,
    };
    match &p.node.content {
        Content::None => w.append(&entry, None),
        Content::Bytes(b) => w.append(&entry, Some(&mut &b[..])),
        Content::Path(path) => {
            let mut f = File::open(path).map_err(content)?;
            w.append(&entry, Some(&mut f))
        }
        Content::Slice { file, offset } => {
            let mut f = File::open(file).map_err(content)?;
            f.seek(SeekFrom::Start(*offset)).map_err(content)?;
            w.append(&entry, Some(&mut f.take(p.node.size)))
        }
    }
}

fn to_tar_entry(p: &Planned) -> TarEntry {
    let n = &p.node;
    let kind = match &n.kind {
        Kind::Dir => EntryKind::Dir,
        Kind::File => EntryKind::File,
        Kind::Symlink(t) => EntryKind::Symlink(t.into()),
        Kind::Hardlink(t) => EntryKind::Hardlink(t.into()),
        Kind::Char(a, b) => EntryKind::Char(*a, *b),
        Kind::Block(a, b) => EntryKind::Block(*a, *b),
        Kind::Fifo => EntryKind::Fifo,
    };
    TarEntry {
        path: PathBuf::from(&p.path),
        size: if n.kind == Kind::File { n.size } else { 0 },
        kind,
        mode: n.mode,
        uid: n.uid as u64,
        gid: n.gid as u64,
        mtime: n.mtime.0,
        mtime_nanos: n.mtime.1,
        xattrs: n.xattrs.clone(),
    }
}

/// RFC 3339 UTC time, as image configs write it.
pub fn timestamp(source_date_epoch: Option<i64>, now: (i64, u32)) -> String {
    let (secs, nanos) = match source_date_epoch {
        Some(e) => (e, 0),
        None => now,
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The uncompressed tar of a layer in the store; a compressed layer is decompressed once into
/// a blob whose digest is its diffID.
fn uncompressed_layer(store: &Store, layer: &LayerRef) -> Result<PathBuf, ImageError> {
    if !store.has_blob(&layer.diff_id) {
        let digest =
            Digest::from_oci(layer.descriptor.digest()).map_err(oci_image::ImageError::from)?;
        let blob = store.open_blob(&digest)?;
        let (mut reader, _) = kiln_oci::compression::decompress(BufReader::new(blob))
            .map_err(io_err(&store.blob_path(&digest)))?;
        let mut w = store.blob_writer()?;
        std::io::copy(&mut reader, &mut w).map_err(io_err(&store.blob_path(&digest)))?;
        w.commit(Some(&layer.diff_id))?;
    }
    Ok(store.blob_path(&layer.diff_id))
}

/// Counts the bytes read through it, to know where each entry's data starts.
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Lists an uncompressed tar file's entries with the offsets of their data, PAX names, link
/// names, sub-second mtimes and xattrs applied.
pub fn index_tar(path: &Path) -> Result<Vec<(String, SrcNode)>, ImageError> {
    let file = File::open(path).map_err(io_err(path))?;
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut reader = kiln_oci::layer::open_layer(Counting {
        inner: file,
        count: count.clone(),
    })?;
    if reader.format() != kiln_oci::Format::Tar {
        return Err(ImageError::Unsupported(format!(
            "{} is compressed; expected a plain tar",
            path.display()
        )));
    }
    let mut out = Vec::new();
    while let Some(e) = reader.next_entry()? {
        // The reader has consumed exactly the headers: the data starts here.
        let offset = count.get();
        let kind = match e.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
            EntryKind::Symlink(t) => Kind::Symlink(t.to_string_lossy().into_owned()),
            EntryKind::Hardlink(t) => Kind::Hardlink(t.to_string_lossy().into_owned()),
            EntryKind::Char(a, b) => Kind::Char(a, b),
            EntryKind::Block(a, b) => Kind::Block(a, b),
            EntryKind::Fifo => Kind::Fifo,
        };
        let is_file = kind == Kind::File;
        let node = SrcNode {
            kind,
            mode: e.mode,
            uid: e.uid.min(u32::MAX as u64) as u32,
            gid: e.gid.min(u32::MAX as u64) as u32,
            size: e.size,
            mtime: (e.mtime, e.mtime_nanos),
            xattrs: e.xattrs,
            content: if is_file {
                Content::Slice {
                    file: path.to_path_buf(),
                    offset,
                }
            } else {
                Content::None
            },
            link_key: None,
        };
        out.push((e.path.to_string_lossy().into_owned(), node));
    }
    Ok(out)
}

/// A 512-byte block that is a tar header: the checksum field matches the block.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum && block.iter().any(|&b| b != 0)
}

/// True when `path` holds a tar archive, plain or compressed (gzip, bzip2, xz, zstd).
pub fn is_archive(path: &Path) -> Result<bool, ImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let Ok((mut r, _)) = kiln_oci::compression::decompress(BufReader::new(f)) else {
        return Ok(false);
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return Ok(false),
        }
    }
    Ok(n == 512 && is_tar_header(&head))
}

/// Decompresses an archive into a temporary tar in the store and indexes it.
pub fn index_archive(
    store: &Store,
    path: &Path,
) -> Result<(PathBuf, Vec<(String, SrcNode)>), ImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let (mut r, _) = kiln_oci::compression::decompress(BufReader::new(f)).map_err(io_err(path))?;
    let tmp = store
        .root()
        .join("tmp")
        .join(format!("add-{}-{}.tar", std::process::id(), unique()));
    let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
    let copied = std::io::copy(&mut r, &mut out);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    match index_tar(&tmp) {
        Ok(entries) => Ok((tmp, entries)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Loads a base image: a name in the store (`busybox`, `app:1`, `host:5000/x@sha256:...`), or
/// an archive or layout named with a transport prefix — `docker-archive:PATH[:NAME]`,
/// `oci-archive:PATH[:NAME]`, `oci:DIR[:TAG]` — which is brought into the store first.
pub fn load(store: &Store, name: &str) -> Result<ImageState, ImageError> {
    if let Some(rest) = name
        .strip_prefix("docker-archive:")
        .or_else(|| name.strip_prefix("oci-archive:"))
    {
        let (path, want) = split_transport(rest);
        let file = File::open(&path).map_err(io_err(&path))?;
        let loaded = kiln_oci::archive::load_archive(store, BufReader::new(file))
            .map_err(|e| ImageError::Unsupported(format!("{}: {e}", path.display())))?;
        let want = want
            .map(|w| Reference::parse(w).map(|r| r.to_string()))
            .transpose()?;
        let pick = loaded
            .iter()
            .find(|l| want.as_ref().is_none_or(|w| l.names.contains(w)))
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        return from_descriptor(store, &pick.manifest, name);
    }
    if let Some(rest) = name.strip_prefix("oci:") {
        let (dir, tag) = split_transport(rest);
        let desc = import_oci_dir(store, &dir, tag)?;
        return from_descriptor(store, &desc, name);
    }
    let reference = Reference::parse(name)?;
    let descriptor = store
        .resolve(&reference.to_string())?
        .ok_or_else(|| ImageError::NotFound(reference.familiar()))?;
    from_descriptor(store, &descriptor, name)
}

/// `PATH[:NAME]`: the part after the last `:` is a name only when the whole is not an
/// existing path.
fn split_transport(rest: &str) -> (PathBuf, Option<&str>) {
    if Path::new(rest).exists() {
        return (PathBuf::from(rest), None);
    }
    match rest.rsplit_once(':') {
        Some((p, n)) if !n.is_empty() && !n.contains('/') => (PathBuf::from(p), Some(n)),
        _ => (PathBuf::from(rest), None),
    }
}

/// Copies the image tagged `tag` (or the only image) of an OCI layout directory into the
/// store, checking every blob's digest; returns its manifest descriptor.
fn import_oci_dir(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Descriptor, ImageError> {
    let index_path = dir.join("index.json");
    let bytes = read_small(&index_path, 4 << 20)?;
    let index = oci_image::parse_index(bytes)?.value;
    let matches = |d: &&Descriptor| {
        let ann = d.annotations().clone().unwrap_or_default();
        match tag {
            None => true,
            Some(t) => {
                ann.get("org.opencontainers.image.ref.name")
                    .is_some_and(|r| r == t || r.ends_with(&format!(":{t}")))
                    || ann
                        .get("io.containerd.image.name")
                        .is_some_and(|r| r.ends_with(&format!(":{t}")))
            }
        }
    };
    let found: Vec<&Descriptor> = index.manifests().iter().filter(matches).collect();
    let desc = match found.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(ImageError::NotFound(format!(
                "oci:{}:{}",
                dir.display(),
                tag.unwrap_or("")
            )))
        }
        _ => {
            return Err(ImageError::Unsupported(format!(
                "{} holds several images; name one with oci:DIR:TAG",
                dir.display()
            )))
        }
    };
    copy_tree_from_layout(store, dir, &desc, 0)?;
    Ok(desc)
}

fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > max {
        return Err(ImageError::Unsupported(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

fn copy_blob_from_layout(store: &Store, dir: &Path, digest: &Digest) -> Result<(), ImageError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    // The digest was validated, so the path cannot leave the layout.
    let path = dir.join("blobs/sha256").join(digest.hex());
    let mut src = File::open(&path).map_err(io_err(&path))?;
    let mut w = store.blob_writer()?;
    std::io::copy(&mut src, &mut w).map_err(io_err(&path))?;
    w.commit(Some(digest))?;
    Ok(())
}

fn copy_tree_from_layout(
    store: &Store,
    dir: &Path,
    desc: &Descriptor,
    depth: usize,
) -> Result<(), ImageError> {
    if depth > 4 {
        return Err(ImageError::Unsupported(
            "image indexes nested too deeply".into(),
        ));
    }
    let digest = Digest::from_oci(desc.digest()).map_err(oci_image::ImageError::from)?;
    copy_blob_from_layout(store, dir, &digest)?;
    if is_index(desc) {
        for m in oci_image::read_index(store, &digest)?.value.manifests() {
            copy_tree_from_layout(store, dir, m, depth + 1)?;
        }
        return Ok(());
    }
    let manifest = oci_image::read_manifest(store, &digest)?.value;
    let config =
        Digest::from_oci(manifest.config().digest()).map_err(oci_image::ImageError::from)?;
    copy_blob_from_layout(store, dir, &config)?;
    for l in manifest.layers() {
        copy_blob_from_layout(
            store,
            dir,
            &Digest::from_oci(l.digest()).map_err(oci_image::ImageError::from)?,
        )?;
    }
    Ok(())
}

fn is_index(desc: &Descriptor) -> bool {
    let mt = desc.media_type().to_string();
    mt == kiln_oci::image::media_type::OCI_INDEX
        || mt == kiln_oci::image::media_type::DOCKER_MANIFEST_LIST
}

/// An image state from a manifest (or, for an image index, the entry for this machine's
/// platform) in the store.
fn from_descriptor(
    store: &Store,
    descriptor: &Descriptor,
    name: &str,
) -> Result<ImageState, ImageError> {
    let mut digest = Digest::from_oci(descriptor.digest()).map_err(oci_image::ImageError::from)?;
    if is_index(descriptor) {
        let host = Platform::host();
        let index = oci_image::read_index(store, &digest)?.value;
        let pick = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == host.os
                        && p.architecture().to_string() == host.architecture
                })
            })
            .ok_or_else(|| {
                ImageError::Unsupported(format!("image {name} has no entry for {host}"))
            })?;
        digest = Digest::from_oci(pick.digest()).map_err(oci_image::ImageError::from)?;
    }
    let manifest = oci_image::read_manifest(store, &digest)?;
    let config_digest =
        Digest::from_oci(manifest.value.config().digest()).map_err(oci_image::ImageError::from)?;
    let config = oci_image::read_config(store, &config_digest)?.value;
    if config.rootfs.diff_ids.len() != manifest.value.layers().len() {
        return Err(ImageError::Unsupported(format!(
            "image {name}: the config lists {} layers, the manifest {}",
            config.rootfs.diff_ids.len(),
            manifest.value.layers().len()
        )));
    }
    let layers = manifest
        .value
        .layers()
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, id)| LayerRef {
            descriptor: d.clone(),
            diff_id: id.clone(),
        })
        .collect();
    Ok(ImageState {
        config: Config(config),
        layers,
        rootfs: None,
        temps: Arc::default(),
        newest: None,
    })
}

/// The image config with the operations Dockerfile instructions perform on it.
#[derive(Clone, Debug)]
pub struct Config(pub ImageConfig);

impl Config {
    fn cc(&mut self) -> &mut ContainerConfig {
        self.0.config.get_or_insert_with(ContainerConfig::default)
    }

    fn get(&self) -> Option<&ContainerConfig> {
        self.0.config.as_ref()
    }

    /// `ENV` pairs in order.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.get()
            .and_then(|c| c.env.as_ref())
            .map(|env| {
                env.iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.clone(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets or replaces `KEY=value`, keeping the position of an existing key.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let env = self.cc().env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }

    /// Labels, created if missing.
    pub fn labels_mut(&mut self) -> &mut BTreeMap<String, String> {
        self.cc().labels.get_or_insert_with(BTreeMap::new)
    }

    /// `created`.
    pub fn set_created(&mut self, now: (i64, u32)) {
        self.0.created = Some(timestamp(None, now));
    }

    /// `WORKDIR` in effect.
    pub fn working_dir(&self) -> Option<String> {
        self.get()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
    }

    /// Sets `WorkingDir`.
    pub fn set_working_dir(&mut self, wd: &str) {
        self.cc().working_dir = Some(wd.to_string());
    }

    /// The base's ONBUILD triggers, removed from the config.
    pub fn take_onbuild(&mut self) -> Vec<String> {
        self.0
            .config
            .as_mut()
            .and_then(|c| c.on_build.take())
            .unwrap_or_default()
    }

    /// Adds an ONBUILD trigger.
    pub fn add_onbuild(&mut self, expr: &str) {
        self.cc()
            .on_build
            .get_or_insert_with(Vec::new)
            .push(expr.to_string());
    }

    /// `USER`.
    pub fn user(&self) -> Option<String> {
        self.get().and_then(|c| c.user.clone())
    }

    /// Sets `User`.
    pub fn set_user(&mut self, u: &str) {
        self.cc().user = Some(u.to_string());
    }

    /// `MAINTAINER` → `author`.
    pub fn set_author(&mut self, a: &str) {
        self.0.author = Some(a.to_string());
    }

    /// Adds an exposed port (`80/tcp`).
    pub fn add_exposed_port(&mut self, p: &str) {
        self.cc()
            .exposed_ports
            .get_or_insert_with(BTreeMap::new)
            .insert(p.to_string(), Default::default());
    }

    /// Adds a volume.
    pub fn add_volume(&mut self, v: &str) {
        self.cc()
            .volumes
            .get_or_insert_with(BTreeMap::new)
            .insert(v.to_string(), Default::default());
    }

    /// `STOPSIGNAL`.
    pub fn set_stop_signal(&mut self, s: &str) {
        self.cc().stop_signal = Some(s.to_string());
    }

    /// The shell for shell-form commands (default `/bin/sh -c`).
    pub fn shell(&self) -> Vec<String> {
        self.get()
            .and_then(|c| c.shell.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// `SHELL`.
    pub fn set_shell(&mut self, sh: Vec<String>) {
        self.cc().shell = Some(sh);
    }

    /// `CMD` (None clears it, as a new ENTRYPOINT does to an inherited CMD).
    pub fn set_cmd(&mut self, cmd: Option<Vec<String>>) {
        self.cc().cmd = cmd;
    }

    /// `CMD` or `ENTRYPOINT` written by the Dockerfile: BuildKit marks the arguments as already
    /// escaped (a Docker field kept for Windows compatibility), so we do too.
    pub fn mark_args_escaped(&mut self) {
        self.cc().args_escaped = true;
    }

    /// `ENTRYPOINT`.
    pub fn set_entrypoint(&mut self, ep: Option<Vec<String>>) {
        self.cc().entrypoint = ep;
    }

    /// `HEALTHCHECK NONE`.
    pub fn set_healthcheck_none(&mut self) {
        self.cc().healthcheck = Some(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..HealthConfig::default()
        });
    }

    /// `HEALTHCHECK CMD`; zero durations and retries mean "inherit" and are left out.
    pub fn set_healthcheck(
        &mut self,
        test: Vec<String>,
        interval: i64,
        timeout: i64,
        start_period: i64,
        start_interval: i64,
        retries: i64,
    ) {
        let nz = |v: i64| (v != 0).then_some(v);
        self.cc().healthcheck = Some(HealthConfig {
            test: Some(test),
            interval: nz(interval),
            timeout: nz(timeout),
            start_period: nz(start_period),
            start_interval: nz(start_interval),
            retries: nz(retries),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(Some(0), (5, 5)), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(None, (1_700_000_000, 120_000_000)),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            timestamp(Some(1_835_438_400), (0, 0)),
            "2028-02-29T12:00:00Z"
        );
    }

    #[test]
    fn env_keeps_order_and_replaces_in_place() {
        let mut c = Config(ImageConfig::default());
        c.set_env("PATH", "/bin");
        c.set_env("A", "1");
        c.set_env("PATH", "/usr/bin:/bin");
        assert_eq!(
            c.env_pairs(),
            vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("A".into(), "1".into())
            ]
        );
    }
}
