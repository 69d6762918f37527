//! The crate's error type. Every variant names what was being done and, where the user can
//! do something about it, ends with a `hint:` line saying what.

use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can go wrong entering the build namespace or running a step.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel is configured to refuse unprivileged user namespaces.
    #[error(
        "unprivileged user namespaces are disabled on this machine ({setting} = {value})\n\
         hint: {fix}"
    )]
    UserNamespacesDisabled {
        /// The sysctl responsible, e.g. `user.max_user_namespaces`.
        setting: &'static str,
        /// Its current value.
        value: String,
        /// What to run to allow them.
        fix: String,
    },

    /// `unshare(CLONE_NEWUSER)` (or the first mount inside the new namespace) failed for a
    /// reason no sysctl explains.
    #[error("cannot create the build user namespace: {step}: {errno}\nhint: {hint}")]
    UserNamespace {
        /// What failed.
        step: &'static str,
        /// The kernel's answer.
        errno: Errno,
        /// What to check.
        hint: String,
    },

    /// Writing the uid/gid maps of the build namespace failed even in single-id mode.
    #[error("cannot write the {which} map of the build user namespace: {detail}\nhint: {hint}")]
    IdMap {
        /// `uid` or `gid`.
        which: &'static str,
        /// The failure.
        detail: String,
        /// What to check.
        hint: String,
    },

    /// A step asks for something the sandbox refuses before starting anything.
    #[error("invalid RUN step: {reason}")]
    InvalidSpec {
        /// What is wrong, with the offending value.
        reason: String,
    },

    /// The step runs as a user or group the build user namespace cannot represent.
    #[error(
        "{kind} {id} does not exist in the build user namespace (mapped ids: {mapped})\n\
         hint: {hint}"
    )]
    UnmappedId {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The id the step asked for.
        id: u32,
        /// The mapped ranges inside the namespace, e.g. `0-0`.
        mapped: String,
        /// How to get more ids mapped.
        hint: String,
    },

    /// Preparing the sandbox in the child failed before the command could start.
    #[error(
        "sandbox setup failed: {step}{}: {errno}{}",
        fmt_path(path),
        fmt_hint(hint)
    )]
    Setup {
        /// The setup step, e.g. `mount proc`.
        step: String,
        /// The path inside the container it was about, if any.
        path: Option<String>,
        /// The kernel's answer.
        errno: Errno,
        /// What to check, when we know.
        hint: Option<String>,
    },

    /// The command itself could not be started (not found, not executable, ...).
    #[error("cannot run {program:?} in the sandbox: {errno}{}", fmt_hint(hint))]
    Exec {
        /// `argv[0]` of the step.
        program: String,
        /// The kernel's answer from `execve`.
        errno: Errno,
        /// What to check, when we know.
        hint: Option<String>,
    },

    /// A system call in the calling (parent) process failed.
    #[error("{context}: {errno}")]
    Sys {
        /// What was being done.
        context: String,
        /// The kernel's answer.
        errno: Errno,
    },

    /// File or process I/O in the calling process failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Removing a mount stub after the step failed.
    #[error("cannot remove mount stub {}: {errno}", path.display())]
    RemoveStub {
        /// The stub, relative to the root filesystem.
        path: PathBuf,
        /// The kernel's answer.
        errno: Errno,
    },
}

fn fmt_path(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
}

fn fmt_hint(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!("\nhint: {h}"))
        .unwrap_or_default()
}

impl SandboxError {
    pub(crate) fn sys(context: impl Into<String>, errno: Errno) -> Self {
        SandboxError::Sys {
            context: context.into(),
            errno,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            source,
        }
    }
}
