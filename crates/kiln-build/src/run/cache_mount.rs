//! Directories of `RUN --mount=type=cache`, kept between builds under `STORE/cache-mounts/`:
//!
//! ```text
//! cache-mounts/<sha256 of the key>/
//!   key          the cache id (and what else went into the key), for people
//!   create.lock  held while an instance is created
//!   0.lock 0/    an instance: the directory a step sees, and its lock
//!   1.lock 1/    another one, made when 0 was busy (private, or shared next to locked)
//! ```
//!
//! The id is hashed, so `id=../../..` names a directory like any other. Sharing works with
//! `flock` on the instance's lock file, held for the whole step, as BuildKit shares its cache
//! refs: `locked` waits for instance 0 to be free; `private` takes the first instance nobody
//! uses, making a new one if needed; `shared` joins other shared users and, when a `locked` or
//! `private` user holds an instance, takes the next. Lock files sit beside the instances, never
//! in what the step sees.

use kiln_dockerfile::instructions::Sharing;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// More instances than this of one cache means something is wrong.
const MAX_INSTANCES: usize = 1000;

/// How a cache directory is made the first time.
pub(crate) struct CacheSpec<'a> {
    /// What identifies the cache: the id, plus `from`, `source` and owner when given.
    pub key: &'a str,
    /// `sharing=`.
    pub sharing: Sharing,
    /// Owner and mode of a new cache's root; `None` keeps what the seed made.
    pub owner: Option<(u32, u32, u32)>,
}

/// An instance held for one step; the lock goes with it.
pub(crate) struct CacheDir {
    /// The directory the step sees.
    pub path: PathBuf,
    _lock: Flock<File>,
}

/// Why a cache could not be had (or removed).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// To which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Ctrl-C while waiting for a locked cache.
    #[error("interrupted")]
    Interrupted,
    /// Every instance is in use.
    #[error("cache {0:?} has {MAX_INSTANCES} instances in use")]
    TooMany(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { what, path, source }
}

/// The directory of a cache key below `root` (`STORE/cache-mounts`).
pub(crate) fn key_dir(root: &Path, key: &str) -> PathBuf {
    root.join(kiln_oci::digest::Digest::of(key.as_bytes()).hex())
}

/// Finds (or makes) an instance of the cache for `spec` and locks it as its sharing mode says.
/// `init` fills a new instance's directory, which it must create (empty, or a seed's copy).
/// `interrupted` is polled while waiting for a locked cache.
pub(crate) fn acquire(
    root: &Path,
    spec: &CacheSpec,
    init: &mut dyn FnMut(&Path) -> io::Result<()>,
    interrupted: &dyn Fn() -> bool,
) -> Result<CacheDir, CacheError> {
    let base = key_dir(root, spec.key);
    fs::create_dir_all(&base).map_err(io_err("creating", &base))?;
    let key_file = base.join("key");
    if !key_file.exists() {
        fs::write(&key_file, spec.key).map_err(io_err("writing", &key_file))?;
    }
    let (n, lock) = match spec.sharing {
        Sharing::Locked => {
            let path = base.join("0.lock");
            let mut file = open_lock(&path)?;
            loop {
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => break (0, l),
                    Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
                    Err((_, e)) => return Err(io_err("locking", &path)(e.into())),
                }
                if interrupted() {
                    return Err(CacheError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Sharing::Shared | Sharing::Private => {
            let how = if spec.sharing == Sharing::Shared {
                FlockArg::LockSharedNonblock
            } else {
                FlockArg::LockExclusiveNonblock
            };
            let mut got = None;
            for n in 0..MAX_INSTANCES {
                let path = base.join(format!("{n}.lock"));
                match Flock::lock(open_lock(&path)?, how) {
                    Ok(l) => {
                        got = Some((n, l));
                        break;
                    }
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                    Err((_, e)) => return Err(io_err("locking", &path)(e.into())),
                }
            }
            got.ok_or_else(|| CacheError::TooMany(spec.key.to_string()))?
        }
    };
    let path = base.join(n.to_string());
    if !path.is_dir() {
        create_instance(&base, &path, spec, init)?;
    }
    Ok(CacheDir { path, _lock: lock })
}

fn open_lock(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("opening", path))
}

/// Makes instance `path` under the creation lock, so two shared users never both fill it.
fn create_instance(
    base: &Path,
    path: &Path,
    spec: &CacheSpec,
    init: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> Result<(), CacheError> {
    let lock_path = base.join("create.lock");
    let _create = Flock::lock(open_lock(&lock_path)?, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("locking", &lock_path)(e.into()))?;
    if path.is_dir() {
        return Ok(());
    }
    let tmp = base.join(format!(".new-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err("removing", &tmp))?;
    }
    let made = init(&tmp).map_err(io_err("filling", &tmp)).and_then(|()| {
        if let Some((uid, gid, mode)) = spec.owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .map_err(io_err("changing the owner of", &tmp))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .map_err(io_err("changing the mode of", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(io_err("renaming", &tmp))
    });
    if made.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    made
}

/// What [`remove_unused`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Cache directories deleted.
    pub removed: usize,
    /// Cache directories left because a build holds them.
    pub busy: usize,
}

/// Deletes every cache directory below `root` (`STORE/cache-mounts`) that no build holds.
/// Each instance is removed under its own exclusive lock, which is kept (a lock file is never
/// deleted, so two builds can never hold two different files for one instance).
pub fn remove_unused(root: &Path) -> Result<Removed, CacheError> {
    let mut done = Removed::default();
    let keys = match fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(io_err("reading", root)(e)),
    };
    for key in keys {
        let base = key.map_err(io_err("reading", root))?.path();
        if !base.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&base).map_err(io_err("reading", &base))? {
            let entry = entry.map_err(io_err("reading", &base))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".new-") {
                // Left by a build killed while filling it; the creation lock tells.
                let lock_path = base.join("create.lock");
                if let Ok(_l) = Flock::lock(open_lock(&lock_path)?, FlockArg::LockExclusiveNonblock)
                {
                    let _ = fs::remove_dir_all(&path);
                }
                continue;
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) || !path.is_dir() {
                continue;
            }
            let lock_path = base.join(format!("{name}.lock"));
            match Flock::lock(open_lock(&lock_path)?, FlockArg::LockExclusiveNonblock) {
                Ok(_held) => {
                    fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
                    done.removed += 1;
                }
                Err(_) => done.busy += 1,
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn root(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("kiln-cache-mount-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn spec(key: &str, sharing: Sharing) -> CacheSpec<'_> {
        CacheSpec {
            key,
            sharing,
            owner: Some((
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                0o750,
            )),
        }
    }

    fn mkdir(p: &Path) -> io::Result<()> {
        fs::create_dir(p)
    }

    fn never() -> bool {
        false
    }

    #[test]
    fn ids_are_hashed_so_dots_stay_inside() {
        let r = root("escape");
        let d = acquire(
            &r.join("cm"),
            &spec("../../..", Sharing::Shared),
            &mut mkdir,
            &never,
        )
        .unwrap();
        assert!(d.path.starts_with(r.join("cm")), "{}", d.path.display());
        assert_eq!(d.path.parent().unwrap().parent().unwrap(), r.join("cm"));
        assert_eq!(
            fs::read_to_string(d.path.parent().unwrap().join("key")).unwrap(),
            "../../.."
        );
        let mode = fs::metadata(&d.path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn shared_users_share_private_users_do_not() {
        let r = root("sharing");
        let a = acquire(&r, &spec("id", Sharing::Shared), &mut mkdir, &never).unwrap();
        let b = acquire(&r, &spec("id", Sharing::Shared), &mut mkdir, &never).unwrap();
        assert_eq!(a.path, b.path, "shared users see one directory");
        let p = acquire(&r, &spec("id", Sharing::Private), &mut mkdir, &never).unwrap();
        assert_ne!(p.path, a.path, "private never joins a directory in use");
        let p2 = acquire(&r, &spec("id", Sharing::Private), &mut mkdir, &never).unwrap();
        assert_ne!(p2.path, p.path);
        drop((a, b));
        let c = acquire(&r, &spec("id", Sharing::Private), &mut mkdir, &never).unwrap();
        assert!(
            c.path.ends_with("0"),
            "instance 0 is free again: {}",
            c.path.display()
        );
        // A locked-style holder of 0 sends shared users to another instance.
        let s = acquire(&r, &spec("id", Sharing::Shared), &mut mkdir, &never).unwrap();
        assert_ne!(s.path, c.path);
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn locked_waits_for_the_holder_and_stops_when_interrupted() {
        let r = root("locked");
        let first = acquire(&r, &spec("id", Sharing::Locked), &mut mkdir, &never).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (r, released) = (r.clone(), released.clone());
            std::thread::spawn(move || {
                let d = acquire(&r, &spec("id", Sharing::Locked), &mut mkdir, &never).unwrap();
                assert!(
                    released.load(Ordering::SeqCst),
                    "got the lock while it was held"
                );
                d.path
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        released.store(true, Ordering::SeqCst);
        let path = first.path.clone();
        drop(first);
        assert_eq!(waiter.join().unwrap(), path);
        let _held = acquire(&r, &spec("id", Sharing::Locked), &mut mkdir, &never).unwrap();
        let e = acquire(&r, &spec("id", Sharing::Locked), &mut mkdir, &|| true);
        assert!(matches!(e, Err(CacheError::Interrupted)));
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn removing_keeps_what_a_build_holds() {
        let r = root("remove");
        let held = acquire(&r, &spec("a", Sharing::Shared), &mut mkdir, &never).unwrap();
        fs::write(held.path.join("f"), "x").unwrap();
        let free = acquire(&r, &spec("b", Sharing::Shared), &mut mkdir, &never).unwrap();
        let free_path = free.path.clone();
        drop(free);
        assert_eq!(
            remove_unused(&r).unwrap(),
            Removed {
                removed: 1,
                busy: 1
            }
        );
        assert!(held.path.join("f").exists() && !free_path.exists());
        assert_eq!(
            remove_unused(&r.join("absent")).unwrap(),
            Removed::default()
        );
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn a_failed_fill_leaves_no_instance() {
        let r = root("fail");
        let mut fail = |p: &Path| -> io::Result<()> {
            fs::create_dir(p)?;
            Err(io::Error::other("seed unreadable"))
        };
        let e = acquire(&r, &spec("id", Sharing::Shared), &mut fail, &never);
        assert!(e.is_err());
        let d = acquire(&r, &spec("id", Sharing::Shared), &mut mkdir, &never).unwrap();
        assert!(d.path.ends_with("0"));
        assert!(fs::read_dir(d.path.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".new")));
        fs::remove_dir_all(&r).unwrap();
    }
}
