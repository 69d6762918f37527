//! kiln's RUN sandbox.
//!
//! Two layers, as rootless podman and buildah do it:
//!
//! - [`userns`]: once per kiln process, [`userns::ensure_build_namespace`] re-executes an
//!   unprivileged kiln inside a user namespace that maps the caller to root and its
//!   /etc/subuid and /etc/subgid ranges to 1.. (via newuidmap/newgidmap), plus a private
//!   mount namespace. Everything touching image files runs in there. As real root it does
//!   nothing.
//! - [`run`]: per RUN step, a pure [`run::plan`] turns a [`run::RunSpec`] into the mounts
//!   and process settings, and [`run::spawn`] applies them in a child that is PID 1 of new
//!   mount, pid, uts and ipc (and, for `--network=none`, net) namespaces, with `pivot_root`
//!   into the step's root filesystem. No cgroups: a builder needs no resource limits.
//!
//! The library never prints; warnings and errors are returned.
//!
//! ```no_run
//! use kiln_sandbox::run::{self, RunIo, RunSpec};
//! use kiln_sandbox::userns::{ensure_build_namespace, NamespaceMode};
//!
//! # fn main() -> Result<(), kiln_sandbox::SandboxError> {
//! // First thing in main: may re-execute the program inside the build namespace.
//! if let NamespaceMode::Rootless { warning: Some(w), .. } = ensure_build_namespace()? {
//!     eprintln!("warning: {w}");
//! }
//! let mut spec = RunSpec::new("/var/lib/kiln/mnt/step1", vec![
//!     "/bin/sh".into(), "-c".into(), "echo hi; id".into(),
//! ]);
//! spec.resolv_conf = Some("/etc/resolv.conf".into());
//! let mut step = run::start(&spec, RunIo::default())?;
//! let status = step.wait()?;
//! run::remove_stubs(&spec.rootfs, step.created_stubs())?;
//! println!("exit code {}", status.code());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
pub mod run;
mod sys;
pub mod userns;

pub use error::SandboxError;
