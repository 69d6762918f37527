//! `kiln import ROOTFS.tar NAME`: a root filesystem tarball as a one-layer image, as
//! `docker import` makes.

use std::io::{self, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Descriptor;

use super::{ArchiveError, Result};
use crate::compression::{Decoder, Format};
use crate::image::{self, media_type, History, ImageConfig, ManifestFormat};
use crate::layer::{open_layer, LayerError};
use crate::store::{BlobWriter, Store};

/// Stores the tarball read from `reader` (plain, or compressed with gzip, zstd, bzip2 or xz) as
/// one uncompressed layer, unchanged, and writes an image over it: a config for
/// `platform_os`/`platform_arch`/`variant` with one history entry (`created_by: "kiln import"`)
/// and `created` at `created` seconds since the epoch (now if `None`; pass `SOURCE_DATE_EPOCH`
/// for reproducible imports). Returns the manifest descriptor, untagged.
///
/// The stream is checked to be a well-formed tar while it is stored, so a file that is not a
/// tarball fails here rather than when a container is first run from it.
pub fn import_rootfs(
    store: &Store,
    reader: impl Read,
    platform_os: &str,
    platform_arch: &str,
    variant: Option<&str>,
    created: Option<i64>,
) -> Result<Descriptor> {
    let _lock = store.lock_shared()?;
    let (decoder, _) = Decoder::sniff(reader).map_err(read_err)?;
    let mut blob = store.blob_writer()?;
    {
        let tee = Tee {
            inner: decoder,
            copy: &mut blob,
        };
        let mut tar = open_layer(tee).map_err(ArchiveError::Read)?;
        if tar.format() != Format::Tar {
            return Err(ArchiveError::UnknownFormat(
                "rootfs tarball is compressed twice".into(),
            ));
        }
        loop {
            match tar.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // Kept as-is: the layer is stored unchanged, and unpacking decides about these.
                Err(LayerError::UnsupportedEntry { .. }) => {}
                Err(e) => return Err(ArchiveError::Read(e)),
            }
        }
    }
    if blob.is_empty() {
        return Err(ArchiveError::UnknownFormat(
            "rootfs tarball is empty".into(),
        ));
    }
    let (diff_id, size) = blob.commit(None)?;

    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    };
    let timestamp = rfc3339(created.unwrap_or_else(now));
    let mut config = ImageConfig::new(platform_os, platform_arch);
    config.variant = variant.map(str::to_owned);
    config.created = Some(timestamp.clone());
    config.push_layer(
        diff_id.clone(),
        History {
            created: Some(timestamp),
            created_by: Some("kiln import".into()),
            ..History::default()
        },
    );
    let layer = image::descriptor(media_type::OCI_LAYER, &diff_id, size);
    let written = image::write_image(store, &config, &[layer], None, ManifestFormat::Oci)?;
    Ok(written.manifest)
}

fn read_err(source: io::Error) -> ArchiveError {
    ArchiveError::ReadEntry {
        entry: "rootfs tarball".into(),
        source,
    }
}

/// Passes the decompressed stream to the tar reader while copying every byte into the blob.
struct Tee<'a, R> {
    inner: R,
    copy: &'a mut BlobWriter,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `secs` since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`), the form image configs use.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
