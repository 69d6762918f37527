//! The build cache: a step's result, found again by a key made from everything the step can
//! see.
//!
//! A step's key is the SHA-256 of its [`Inputs`]: the key of the step before it (or of the
//! base image), the instruction after variable expansion, and what else reaches it — the
//! environment and build args of a RUN, the path, type, mode, owner and content digest (never
//! the mtime) of every file a COPY or ADD writes. The key of the last step of a stage is the
//! stage's key, so `FROM stage` and `COPY --from=stage` chain on.
//!
//! Records live under `<store>/cache/`:
//! * `steps/<key hex>`: JSON with the step's time and, for steps that made a layer, the
//!   layer (a blob of the store). A record whose layer blob is gone is a miss.
//! * `files`: content digests of context files by (device, inode, size, mtime, ctime), and of
//!   entries in stored layer tars by (blob, offset, size), so an unchanged context is not
//!   read again.
//! * `explain/<build hex>`: the inputs of every step of the last build of a Dockerfile in a
//!   context, so a miss can say which input changed (`--explain-cache`).
//!
//! Records are written through a temporary file renamed into place; one that cannot be read
//! is a miss, never an error, so a damaged cache costs time and nothing else.

use crate::copy::{Content, SrcNode};
use kiln_oci::digest::{Digest, Sha256Hasher};
use kiln_oci::layer::LayerInfo;
use kiln_oci::Compression;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Changes whenever keys would mean something else, so old records simply stop matching.
const KEY_VERSION: &str = "kiln-step-cache-v1";

/// The inputs of one step, in a fixed order: (name, value). Values are short texts or digests;
/// secrets never appear (env values are hashed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs(pub Vec<(String, String)>);

impl Inputs {
    /// Inputs that start from `parent` (the previous step's key, or the base's).
    pub fn after(parent: &Digest) -> Inputs {
        Inputs(vec![("parent".into(), parent.to_string())])
    }

    /// Adds one input.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The step's key.
    pub fn key(&self) -> Digest {
        let mut h = Sha256Hasher::new();
        h.update(KEY_VERSION.as_bytes());
        for (name, value) in &self.0 {
            h.update(b"\n");
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(value.len() as u64).to_le_bytes());
            h.update(value.as_bytes());
        }
        h.finish().0
    }
}

/// The key of a base: the image's config and layers, or `scratch` for a platform.
pub fn base_key(kind: &str, parts: &[&[u8]]) -> Digest {
    let mut h = Sha256Hasher::new();
    h.update(KEY_VERSION.as_bytes());
    h.update(kind.as_bytes());
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finish().0
}

/// A digest of a value that must not be stored in clear (environment values may be tokens).
pub fn hidden(value: &str) -> String {
    Digest::of(value.as_bytes()).to_string()
}

/// A layer a step made, as its record keeps it. kiln stores the layers it builds
/// uncompressed, so the stored blob is the diffID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    /// Digest of the uncompressed tar: the blob in the store and the config's diffID.
    pub diff_id: Digest,
    /// Its size.
    pub size: u64,
}

impl CachedLayer {
    /// What the image state takes.
    pub fn info(&self) -> LayerInfo {
        LayerInfo {
            diff_id: self.diff_id.clone(),
            digest: self.diff_id.clone(),
            size: self.size,
            uncompressed_size: self.size,
            compression: Compression::None,
            media_type: kiln_oci::image::media_type::OCI_LAYER,
        }
    }

    /// From a layer just written.
    pub fn of(info: &LayerInfo) -> CachedLayer {
        CachedLayer {
            diff_id: info.diff_id.clone(),
            size: info.uncompressed_size,
        }
    }
}

/// What a step left behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the step ran (seconds, nanoseconds): its history entry's time.
    pub created: (i64, u32),
    /// The layer it made, if any.
    pub layer: Option<CachedLayer>,
}

/// Step records, file digests and the last build's inputs, under one store. Shared by the
/// stages of a build that run at once.
pub struct StepCache {
    dir: PathBuf,
    files: Mutex<FileDigests>,
    /// Where this build's inputs go for the next `--explain-cache`.
    explain_file: PathBuf,
    previous: BTreeMap<String, Inputs>,
    current: Mutex<BTreeMap<String, Inputs>>,
    /// Caches from other machines (`--cache-from`), asked after the store's own records.
    imports: Vec<crate::cache_io::Imported>,
    /// Every step of this build: (stage, key, record), for `--cache-to`.
    steps: Mutex<Vec<(usize, Digest, Record)>>,
}

impl StepCache {
    /// Opens the cache of the store at `root` for a build identified by `build_id` (the
    /// context directory, the Dockerfile and the target).
    pub fn open(root: &Path, build_id: &str) -> StepCache {
        let dir = root.join("cache");
        let explain_file = dir
            .join("explain")
            .join(Digest::of(build_id.as_bytes()).hex());
        let previous = std::fs::read(&explain_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StepCache {
            files: Mutex::new(FileDigests::load(dir.join("files"))),
            dir,
            explain_file,
            previous,
            current: Mutex::new(BTreeMap::new()),
            imports: Vec::new(),
            steps: Mutex::new(Vec::new()),
        }
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("steps").join(key.hex())
    }

    /// Adds caches to ask when the store has no record.
    pub fn with_imports(mut self, imports: Vec<crate::cache_io::Imported>) -> StepCache {
        self.imports = imports;
        self
    }

    /// The record for `key`: the store's own, else one of an imported cache (its layer is
    /// then fetched into the store and the record kept locally).
    pub fn lookup(&self, store: &kiln_oci::store::Store, key: &Digest) -> Option<Record> {
        if let Some(r) = self.lookup_local(store, key) {
            return Some(r);
        }
        for imported in &self.imports {
            let Some((created, layer)) = imported.find(key) else {
                continue;
            };
            let layer = match layer {
                None => None,
                Some(l) => match imported.fetch(store, &l) {
                    Ok(size) => Some(CachedLayer {
                        diff_id: l.diff_id().clone(),
                        size,
                    }),
                    // An unreachable cache is a miss: the step runs.
                    Err(_) => continue,
                },
            };
            let record = Record { created, layer };
            let _ = self.insert(key, &record);
            return Some(record);
        }
        None
    }

    /// Notes a step of this build for `--cache-to`.
    pub fn used(&self, stage: usize, key: &Digest, record: &Record) {
        if let Ok(mut s) = self.steps.lock() {
            s.push((stage, key.clone(), record.clone()));
        }
    }

    /// The steps of this build, in the order they finished.
    pub fn steps(&self) -> Vec<(usize, Digest, Record)> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn lookup_local(&self, store: &kiln_oci::store::Store, key: &Digest) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(key)).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        if let Some(l) = &record.layer {
            match store.blob_size(&l.diff_id) {
                Ok(size) if size == l.size => {}
                _ => return None,
            }
        }
        Some(record)
    }

    /// Remembers what the step with `key` made.
    pub fn insert(&self, key: &Digest, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_replacing(&self.record_path(key), &bytes)
    }

    /// Notes the inputs of the step at `position` (e.g. `build/3`) for the next build's
    /// explanations.
    pub fn note(&self, position: &str, inputs: &Inputs) {
        if let Ok(mut current) = self.current.lock() {
            current.insert(position.to_owned(), inputs.clone());
        }
    }

    /// Why the step at `position` with `inputs` has no record: the first input that differs
    /// from the last build's, in words.
    pub fn explain_miss(&self, position: &str, inputs: &Inputs) -> String {
        let Some(before) = self.previous.get(position) else {
            return "no earlier build of this step".into();
        };
        let old: HashMap<&str, &str> = before
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let new: HashMap<&str, &str> = inputs
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut changes = Vec::new();
        for (name, value) in &inputs.0 {
            match old.get(name.as_str()) {
                Some(v) if v == value => {}
                Some(_) => changes.push(describe(name, "changed")),
                None => changes.push(describe(name, "added")),
            }
        }
        for (name, _) in &before.0 {
            if !new.contains_key(name.as_str()) {
                changes.push(describe(name, "removed"));
            }
        }
        // The parent always differs after a change further up; name it only when it is the
        // sole reason.
        if changes.len() > 1 {
            changes.retain(|c| !c.starts_with("an earlier step"));
        }
        match changes.len() {
            0 => "no record (pruned, or the last build did not finish)".into(),
            1..=3 => changes.join("; "),
            n => format!("{}; and {} more", changes[..3].join("; "), n - 3),
        }
    }

    /// How a file enters a key: type, mode, owner, size, content digest and xattrs — not
    /// its mtime. `blobs` is the store's blob directory (slices of stored layers are
    /// memoized; other tar files are temporary).
    pub fn describe_file(&self, node: &SrcNode, blobs: &Path) -> io::Result<String> {
        let content = self.content_digest(node, blobs)?;
        let xattrs: Vec<String> = node
            .xattrs
            .iter()
            .map(|(k, v)| format!("{k}={}", Digest::of(v)))
            .collect();
        Ok(format!(
            "{:?} {:o} {}:{} {} {} [{}]",
            node.kind,
            node.mode,
            node.uid,
            node.gid,
            node.size,
            content.map_or_else(|| "-".to_owned(), |d| d.to_string()),
            xattrs.join(",")
        ))
    }

    /// Content digest of a node's bytes (`None` for entries without content).
    fn content_digest(&self, node: &SrcNode, blobs: &Path) -> io::Result<Option<Digest>> {
        match &node.content {
            Content::None => Ok(None),
            Content::Bytes(b) => Ok(Some(Digest::of(b))),
            Content::Path(path) => {
                let key = FileDigests::file_key(path)?;
                self.memoized(key, || hash_reader(File::open(path)?))
                    .map(Some)
            }
            Content::Slice { file, offset } => {
                // Stored blobs never change, so their name and the range identify the bytes;
                // other tar files (a decompressed ADD archive) are temporary.
                let key = format!("s {} {offset} {}", file.display(), node.size);
                let read = || {
                    let mut f = File::open(file)?;
                    f.seek(SeekFrom::Start(*offset))?;
                    hash_reader(f.take(node.size))
                };
                if file.starts_with(blobs) {
                    self.memoized(key, read).map(Some)
                } else {
                    read().map(Some)
                }
            }
        }
    }

    /// The digest remembered under `key`, else `compute`'s (remembered), without holding the
    /// lock while hashing.
    fn memoized(
        &self,
        key: String,
        compute: impl FnOnce() -> io::Result<Digest>,
    ) -> io::Result<Digest> {
        if let Some(d) = self
            .files
            .lock()
            .ok()
            .and_then(|f| f.map.get(&key).cloned())
        {
            return Ok(d);
        }
        let d = compute()?;
        if let Ok(mut f) = self.files.lock() {
            f.remember(key, &d);
        }
        Ok(d)
    }

    /// Saves file digests and this build's inputs. Failures only cost time later.
    pub fn finish(&self) {
        if let Ok(mut f) = self.files.lock() {
            f.save();
        }
        let current = self.current.lock().map(|c| c.clone()).unwrap_or_default();
        if let Ok(bytes) = serde_json::to_vec(&current) {
            let _ = write_replacing(&self.explain_file, &bytes);
        }
    }
}

fn describe(input: &str, how: &str) -> String {
    if input == "parent" {
        return "an earlier step changed".into();
    }
    if input == "instruction" {
        return format!("the instruction {how}");
    }
    match input.split_once(' ') {
        Some(("file", path)) => format!("file {path} {how}"),
        Some(("env", name)) => format!("build arg or env {name} {how}"),
        Some((kind, what)) => format!("{kind} {what} {how}"),
        None => format!("{input} {how}"),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Content digests by file identity.
struct FileDigests {
    path: PathBuf,
    map: HashMap<String, Digest>,
    dirty: bool,
}

/// Entries kept at most; beyond that the file starts over (it is only a cache).
const MAX_FILE_DIGESTS: usize = 1 << 20;

impl FileDigests {
    fn load(path: PathBuf) -> FileDigests {
        let mut map = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some((key, digest)) = line.rsplit_once(' ') {
                    if let Ok(d) = digest.parse::<Digest>() {
                        map.insert(key.to_owned(), d);
                    }
                }
            }
        }
        FileDigests {
            path,
            map,
            dirty: false,
        }
    }

    /// A context file's identity: (device, inode, size, mtime, ctime). Any write moves ctime.
    fn file_key(path: &Path) -> io::Result<String> {
        let m = std::fs::metadata(path)?;
        Ok(format!(
            "f {} {} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ))
    }

    fn remember(&mut self, key: String, d: &Digest) {
        if self.map.len() >= MAX_FILE_DIGESTS {
            self.map.clear();
        }
        self.map.insert(key, d.clone());
        self.dirty = true;
    }

    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let mut text = String::with_capacity(self.map.len() * 120);
        for (k, d) in &self.map {
            text.push_str(k);
            text.push(' ');
            text.push_str(d.as_str());
            text.push('\n');
        }
        if write_replacing(&self.path, text.as_bytes()).is_ok() {
            self.dirty = false;
        }
    }
}

fn hash_reader(mut r: impl Read) -> io::Result<Digest> {
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_input_and_its_boundaries() {
        let parent = Digest::of(b"p");
        let mut a = Inputs::after(&parent);
        a.push("instruction", "RUN make");
        let mut b = Inputs::after(&parent);
        b.push("instruction", "RUN mak");
        assert_ne!(a.key(), b.key());
        // Moving bytes between name and value changes the key.
        let mut c = Inputs::after(&parent);
        c.push("instructionR", "UN make");
        assert_ne!(a.key(), c.key());
        let mut d = Inputs::after(&Digest::of(b"q"));
        d.push("instruction", "RUN make");
        assert_ne!(a.key(), d.key());
        assert_eq!(a.key(), a.clone().key());
    }

    #[test]
    fn a_miss_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Digest::of(b"p");
        let mut first = Inputs::after(&parent);
        first.push("instruction", "COPY . /src");
        first.push("file src/a.js", Digest::of(b"1").to_string());
        first.push("file src/b.js", Digest::of(b"2").to_string());
        let cache = StepCache::open(dir.path(), "ctx");
        assert_eq!(
            cache.explain_miss("s/1", &first),
            "no earlier build of this step"
        );
        cache.note("s/1", &first);
        cache.finish();

        let cache = StepCache::open(dir.path(), "ctx");
        let mut second = first.clone();
        second.0[3].1 = Digest::of(b"3").to_string();
        assert_eq!(cache.explain_miss("s/1", &second), "file src/b.js changed");
        let mut third = Inputs::after(&Digest::of(b"other"));
        third.0.extend(first.0[1..].iter().cloned());
        assert_eq!(cache.explain_miss("s/1", &third), "an earlier step changed");
        third.push("env TOKEN", hidden("x"));
        assert_eq!(
            cache.explain_miss("s/1", &third),
            "build arg or env TOKEN added"
        );
        // Another build id has its own history.
        let other = StepCache::open(dir.path(), "other");
        assert_eq!(
            other.explain_miss("s/1", &second),
            "no earlier build of this step"
        );
    }

    #[test]
    fn records_round_trip_and_need_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = kiln_oci::store::Store::open(dir.path().join("store")).unwrap();
        let cache = StepCache::open(store.root(), "b");
        let (digest, size) = store.put_blob(b"layer bytes").unwrap();
        let key = Digest::of(b"k");
        let rec = Record {
            created: (5, 6),
            layer: Some(CachedLayer {
                diff_id: digest,
                size,
            }),
        };
        assert!(cache.lookup(&store, &key).is_none());
        cache.insert(&key, &rec).unwrap();
        assert_eq!(cache.lookup(&store, &key), Some(rec.clone()));
        let missing = Record {
            layer: Some(CachedLayer {
                diff_id: Digest::of(b"gone"),
                size: 4,
            }),
            ..rec
        };
        cache.insert(&key, &missing).unwrap();
        assert!(
            cache.lookup(&store, &key).is_none(),
            "a pruned layer is a miss"
        );
        std::fs::write(cache.record_path(&key), b"{not json").unwrap();
        assert!(
            cache.lookup(&store, &key).is_none(),
            "a damaged record is a miss"
        );
    }

    #[test]
    fn file_digests_follow_content_not_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"one").unwrap();
        let node = |path: &Path| SrcNode {
            content: Content::Path(path.to_path_buf()),
            ..SrcNode::dir(0o644, 0, 0, (0, 0))
        };
        let blobs = dir.path().join("blobs");
        let cache = StepCache::open(dir.path(), "b");
        let d = |c: &StepCache| c.content_digest(&node(&f), &blobs).unwrap().unwrap();
        assert_eq!(d(&cache), Digest::of(b"one"));
        cache.finish();
        // Rewritten with the same size: ctime moves, so the digest is recomputed.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"two").unwrap();
        let cache = StepCache::open(dir.path(), "b");
        assert_eq!(cache.files.lock().unwrap().map.len(), 1, "loaded from disk");
        assert_eq!(d(&cache), Digest::of(b"two"));
    }
}
