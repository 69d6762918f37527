//! The kiln build engine: executes the stages of a Dockerfile into image layers and an image
//! config in the content store.
//!
//! The engine works on an image's filesystem *view* ([`rootfs::Rootfs`], built from layer tar
//! headers) rather than an extracted root: COPY and ADD plan their entries against the view and
//! stream them straight into a new layer, so a build without RUN needs no root, no user
//! namespace and no extraction.
//!
//! ```no_run
//! use kiln_build::{build, BuildRequest, NoProgress};
//! let store = kiln_oci::store::Store::open("/tmp/kiln-store").unwrap();
//! let req = BuildRequest::new("examples/genesis".into(), std::fs::read("examples/genesis/Dockerfile").unwrap());
//! let built = build(&store, &req, &mut NoProgress).unwrap();
//! println!("{}", built.config);
//! ```
#![deny(missing_docs)]

pub mod archive;
pub mod cache;
pub mod cache_io;
pub mod context;
pub mod copy;
mod exec;
pub mod fetch;
pub mod glob;
pub mod image;
pub mod rootfs;
pub mod run;
pub mod run_argv;
pub mod users;

/// Image references live in kiln-oci; re-exported for callers of the build engine.
pub use kiln_oci::reference;

pub use exec::{
    build, registry_platform, BuildError, BuildRequest, Built, Event, NoProgress, Progress,
    PullPolicy, SecretSource, Squash,
};
