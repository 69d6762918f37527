//! Inter-process locks on the store, by flock on files under `ROOT/locks/`.
//!
//! Two locks, so that holding one never has to be upgraded to the other:
//! - `locks/store`: shared by anything that writes blobs it has not yet tagged (a build), taken
//!   exclusively by [`Store::gc`], so gc never deletes a blob a live build is about to use;
//! - `locks/index`: held exclusively, briefly, around every read-modify-write of index.json.
//!
//! Each guard opens the lock file anew: flock locks belong to an open file description, so two
//! guards in one process exclude each other just as two processes do.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use super::temp::lock;
use super::{Result, Store, StoreError};

/// Whether a [`StoreLock`] is shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder, no shared holders.
    Exclusive,
}

/// A held store lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    _file: Flock<File>,
    mode: LockMode,
}

impl StoreLock {
    /// How this lock is held.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

impl Store {
    /// Takes the store lock shared, waiting while gc runs.
    ///
    /// Hold it while writing blobs that are not yet reachable from a tag, so a concurrent
    /// [`Store::gc`] cannot collect them. Do not call [`Store::gc`] while holding it: gc waits
    /// for every shared holder, including this one.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.take("store", LockMode::Shared)
    }

    /// Takes the store lock exclusively, waiting for every shared holder.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.take("store", LockMode::Exclusive)
    }

    /// The short lock around index.json updates.
    pub(crate) fn lock_index(&self) -> Result<StoreLock> {
        self.take("index", LockMode::Exclusive)
    }

    fn take(&self, name: &str, mode: LockMode) -> Result<StoreLock> {
        let path: PathBuf = self.locks_dir().join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|source| StoreError::Io {
                op: "open lock file",
                path: path.clone(),
                source,
            })?;
        let arg = match mode {
            LockMode::Shared => FlockArg::LockShared,
            LockMode::Exclusive => FlockArg::LockExclusive,
        };
        let file = lock(file, arg).map_err(|e| StoreError::Io {
            op: "flock",
            path,
            source: e.into(),
        })?;
        Ok(StoreLock { _file: file, mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn exclusive_waits_for_shared_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.lock_shared().unwrap();
        let b = store.lock_shared().unwrap();
        assert_eq!(a.mode(), LockMode::Shared);
        let got = Arc::new(AtomicBool::new(false));
        let t = {
            let store = store.clone();
            let got = got.clone();
            std::thread::spawn(move || {
                let _x = store.lock_exclusive().unwrap();
                got.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!got.load(Ordering::SeqCst));
        drop(a);
        drop(b);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }
}
