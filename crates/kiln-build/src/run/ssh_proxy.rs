//! `RUN --mount=type=ssh`: a socket of the step's own that forwards every connection to the
//! ssh agent given with `--ssh`. As with BuildKit, the step never sees the host's socket
//! path, and the socket it sees has the owner and mode the mount asks for (the agent's own
//! socket is left alone).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Longest socket path `sockaddr_un` takes comfortably; longer ones go through the directory's
/// descriptor.
const SHORT_PATH: usize = 100;

/// A running forwarder; stops (and its socket goes) when dropped.
pub(crate) struct Proxy {
    /// The socket to bind into the step.
    pub path: PathBuf,
    listener: UnixListener,
    thread: Option<JoinHandle<()>>,
}

/// Listens on `dir/agent.sock` (owned by `uid:gid`, mode `mode`) and forwards to `agent`.
pub(crate) fn start(dir: &Path, agent: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<Proxy> {
    // Fail here, with the path in the message, rather than in the step.
    drop(
        connect(agent)
            .map_err(|e| io::Error::new(e.kind(), format!("ssh agent {}: {e}", agent.display())))?,
    );
    let path = dir.join("agent.sock");
    let listener = with_short_path(&path, |p| UnixListener::bind(p))?;
    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    let accepting = listener.try_clone()?;
    let agent = agent.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("kiln-ssh-proxy".into())
        .spawn(move || {
            // Ends when the listener is shut down (accept then fails).
            for client in accepting.incoming() {
                let Ok(client) = client else { break };
                let agent = agent.clone();
                let _ = std::thread::Builder::new()
                    .name("kiln-ssh-conn".into())
                    .spawn(move || forward(client, &agent));
            }
        })?;
    Ok(Proxy {
        path,
        listener,
        thread: Some(thread),
    })
}

/// Copies both ways until either side closes. When the step ends its processes are gone, so
/// every connection closes and these threads end with it.
fn forward(client: UnixStream, agent: &Path) {
    let Ok(upstream) = connect(agent) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut u_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

fn connect(path: &Path) -> io::Result<UnixStream> {
    with_short_path(path, |p| UnixStream::connect(p))
}

/// Runs `f` with `path`, or, when it is too long for a socket address, with the same file
/// named through a descriptor of its directory (`/proc/self/fd/N/name`).
fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() < SHORT_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let d = std::fs::File::open(dir)?;
    f(&Path::new(&format!("/proc/self/fd/{}", d.as_raw_fd())).join(name))
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket makes a blocked accept fail at once.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_connections_and_stops_when_dropped() {
        // A long directory name: the socket path does not fit a sockaddr_un.
        let dir = std::env::temp_dir().join(format!(
            "kiln-ssh-proxy-{}-{}",
            std::process::id(),
            "x".repeat(90)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proxy")).unwrap();
        // A fake agent that answers each request with its bytes reversed.
        let agent_path = dir.join("agent");
        let agent = with_short_path(&agent_path, |p| UnixListener::bind(p)).unwrap();
        std::thread::spawn(move || {
            for c in agent.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 5];
                // The proxy's own check at start connects and hangs up.
                if c.read_exact(&mut buf).is_ok() {
                    buf.reverse();
                    c.write_all(&buf).unwrap();
                }
            }
        });
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let proxy = start(&dir.join("proxy"), &agent_path, me.0, me.1, 0o600).unwrap();
        let mode = std::fs::metadata(&proxy.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for _ in 0..2 {
            let mut c = connect(&proxy.path).unwrap();
            c.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"olleh");
        }
        let path = proxy.path.clone();
        drop(proxy);
        assert!(!path.exists(), "the socket goes with the proxy");
        assert!(
            start(&dir.join("proxy"), &dir.join("no-agent"), me.0, me.1, 0o600).is_err(),
            "a missing agent is reported up front"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
