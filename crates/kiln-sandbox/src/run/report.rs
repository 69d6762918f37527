//! What the child tells the parent through the close-on-exec report pipe before it execs:
//! the stubs it created in the root filesystem, and, if setup fails, what failed. EOF
//! without an error frame means the exec succeeded.

use std::path::PathBuf;

use nix::errno::Errno;

/// One message from the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A file or directory created in the root filesystem, relative to it.
    Stub(PathBuf),
    /// The same, for one of the extra mounts' targets.
    MountStub(PathBuf),
    /// Setup failed.
    Failed {
        step: String,
        path: Option<String>,
        errno: Errno,
    },
    /// execve failed for every candidate.
    ExecFailed { program: String, errno: Errno },
}

const STUB: u8 = b'S';
const MOUNT_STUB: u8 = b'M';
const FAILED: u8 = b'E';
const EXEC: u8 = b'X';

impl Frame {
    /// `tag, u32 length (LE), payload`; the payload fields are NUL-separated.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let (tag, payload): (u8, Vec<u8>) = match self {
            Frame::Stub(p) => (STUB, p.as_os_str().as_bytes().to_vec()),
            Frame::MountStub(p) => (MOUNT_STUB, p.as_os_str().as_bytes().to_vec()),
            Frame::Failed { step, path, errno } => {
                let mut v = (*errno as i32).to_string().into_bytes();
                v.push(0);
                v.extend_from_slice(step.as_bytes());
                if let Some(p) = path {
                    v.push(0);
                    v.extend_from_slice(p.as_bytes());
                }
                (FAILED, v)
            }
            Frame::ExecFailed { program, errno } => {
                let mut v = (*errno as i32).to_string().into_bytes();
                v.push(0);
                v.extend_from_slice(program.as_bytes());
                (EXEC, v)
            }
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(tag);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Splits a byte stream into frames; a truncated tail is ignored.
    pub(crate) fn decode_all(mut bytes: &[u8]) -> Vec<Frame> {
        use std::os::unix::ffi::OsStrExt;
        let mut frames = Vec::new();
        while bytes.len() >= 5 {
            let tag = bytes[0];
            let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            let Some(payload) = bytes.get(5..5 + len) else {
                break;
            };
            bytes = &bytes[5 + len..];
            let mut fields = payload.split(|b| *b == 0);
            let text = |f: Option<&[u8]>| f.map(|b| String::from_utf8_lossy(b).into_owned());
            let errno = |f: Option<&[u8]>| {
                Errno::from_raw(text(f).and_then(|s| s.parse::<i32>().ok()).unwrap_or(0))
            };
            frames.push(match tag {
                STUB => Frame::Stub(PathBuf::from(std::ffi::OsStr::from_bytes(payload))),
                MOUNT_STUB => Frame::MountStub(PathBuf::from(std::ffi::OsStr::from_bytes(payload))),
                FAILED => {
                    let errno = errno(fields.next());
                    Frame::Failed {
                        step: text(fields.next()).unwrap_or_default(),
                        path: text(fields.next()),
                        errno,
                    }
                }
                EXEC => {
                    let errno = errno(fields.next());
                    Frame::ExecFailed {
                        program: text(fields.next()).unwrap_or_default(),
                        errno,
                    }
                }
                _ => continue,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Stub("etc/resolv.conf".into()),
            Frame::Stub("proc".into()),
            Frame::MountStub("run/secrets/x".into()),
            Frame::Failed {
                step: "mount proc".into(),
                path: Some("/proc".into()),
                errno: Errno::EPERM,
            },
            Frame::Failed {
                step: "sethostname".into(),
                path: None,
                errno: Errno::EINVAL,
            },
            Frame::ExecFailed {
                program: "/bin/nope".into(),
                errno: Errno::ENOENT,
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        assert_eq!(Frame::decode_all(&bytes), frames);
        // A torn last frame is dropped, not misread.
        assert_eq!(
            Frame::decode_all(&bytes[..bytes.len() - 2]),
            frames[..5].to_vec()
        );
    }
}
