//! Temp files under `ROOT/tmp`, each held by an exclusive flock for as long as its writer lives.
//!
//! The lock is how a cleaner tells a live writer's file from a dead one's: the kernel drops a
//! flock when its process dies, so a temp file whose lock can be taken has no owner.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{io_err, Result, StoreError};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file that is removed on drop unless persisted.
pub(crate) struct TempFile {
    file: Option<Flock<File>>,
    path: PathBuf,
}

impl TempFile {
    /// Creates a new, uniquely named, locked file in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<TempFile> {
        loop {
            let path = dir.join(unique_name());
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path);
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create temp file", &path)(e)),
            };
            let file = lock(file, FlockArg::LockExclusive)
                .map_err(|e| io_err("lock temp file", &path)(e.into()))?;
            return Ok(TempFile {
                file: Some(file),
                path,
            });
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file used after persist")
    }

    /// Writes `bytes` and fsyncs.
    pub(crate) fn write_all_synced(&mut self, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        self.file()
            .write_all(bytes)
            .map_err(io_err("write", &path))?;
        self.sync()
    }

    /// Flushes the file's data and metadata to disk.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.file().sync_all().map_err(io_err("fsync", &path))
    }

    /// Renames the file to `target` (replacing it). The caller fsyncs the target's directory.
    pub(crate) fn persist(mut self, target: &Path) -> Result<()> {
        fs::rename(&self.path, target).map_err(|source| StoreError::Io {
            op: "rename into place",
            path: target.to_path_buf(),
            source,
        })?;
        // Now owned by its new name: keep Drop from deleting anything.
        self.file = None;
        Ok(())
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Unlink before the lock goes with the file, so no cleaner sees it unlocked.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}.tmp", std::process::id())
}

/// flock, retrying when a signal interrupts the wait.
pub(crate) fn lock(mut file: File, arg: FlockArg) -> std::result::Result<Flock<File>, Errno> {
    loop {
        match Flock::lock(file, arg) {
            Ok(l) => return Ok(l),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(e),
        }
    }
}

/// Removes temp files in `dir` that are older than `min_age` and whose lock nobody holds.
/// Returns how many were removed.
pub(crate) fn remove_stale(dir: &Path, min_age: Duration) -> Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        if is_stale(&entry.path(), now, min_age) {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `path` if it is an old, unlocked file; true if it did.
fn is_stale(path: &Path, now: SystemTime, min_age: Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let old_enough = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age >= min_age);
    if !meta.is_file() || !old_enough {
        return false;
    }
    let Ok(file) = File::open(path) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Unlink while holding the lock, so a writer cannot be mid-way through with it.
        Ok(_held) => fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn drop_removes_and_persist_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::create(dir.path()).unwrap();
        let p = t.path().to_path_buf();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());

        let mut t = TempFile::create(dir.path()).unwrap();
        t.write_all_synced(b"data").unwrap();
        let target = dir.path().join("final");
        t.persist(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"data");
    }

    #[test]
    fn stale_files_go_but_locked_and_young_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let live = TempFile::create(dir.path()).unwrap();
        age(live.path(), 3600);
        let dead = dir.path().join("1-2-3.tmp");
        fs::write(&dead, b"partial").unwrap();
        age(&dead, 3600);
        let young = dir.path().join("4-5-6.tmp");
        fs::write(&young, b"partial").unwrap();

        assert_eq!(
            remove_stale(dir.path(), Duration::from_secs(60)).unwrap(),
            1
        );
        assert!(live.path().exists());
        assert!(!dead.exists());
        assert!(young.exists());
    }
}
