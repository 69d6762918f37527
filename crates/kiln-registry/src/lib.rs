//! `kiln-registry`: a small, synchronous client for the OCI distribution API.
//!
//! It pulls images into a [`kiln_oci::Store`] and pushes them from one. It is written directly
//! on `ureq` rather than on a full registry SDK so that:
//! - manifests travel as their exact bytes (a re-serialization would change their digest);
//! - blobs stream between the network and the store, so memory stays bounded whatever the
//!   layer size;
//! - every blob is checked against its digest before the store accepts it.
//!
//! ```no_run
//! use kiln_oci::{reference::Reference, Store};
//! use kiln_registry::{Client, Platform};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("/tmp/store")?;
//! let client = Client::new();
//! let image = Reference::parse("localhost:5000/app:1")?;
//! let pulled = client.pull(&store, &image, &Platform::new("linux", "amd64"))?;
//! println!("{} ({} blobs fetched)", pulled.digest, pulled.blobs_fetched);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod auth;
mod client;
mod error;
mod progress;
mod pull;
mod push;

pub use auth::{parse_challenges, Challenge};
pub use client::{Client, Credentials, DEFAULT_CHUNK_SIZE};
pub use error::{RegistryError, Result};
pub use progress::{ProgressFn, Transfer};
pub use pull::{Platform, PullReport};
pub use push::PushReport;
