//! Finding images in the store by name or ID, and the numbers the image commands show.

use anyhow::{bail, Context, Result};
use kiln_build::reference::Reference;
use kiln_oci::digest::Digest;
use kiln_oci::image::{self, ImageConfig};
use kiln_oci::store::Store;
use oci_spec::image::{Descriptor, ImageManifest};

/// An image found in the store.
pub struct Found {
    /// Its manifest descriptor.
    pub manifest: Descriptor,
    /// The manifest.
    pub parsed: ImageManifest,
    /// Manifest digest.
    pub manifest_digest: Digest,
    /// Config digest: the image ID.
    pub id: Digest,
    /// The config.
    pub config: ImageConfig,
    /// Full names of every tag pointing at this manifest.
    pub tags: Vec<String>,
}

impl Found {
    /// Tags in docker's short form (`app:1`).
    pub fn repo_tags(&self) -> Vec<String> {
        self.tags
            .iter()
            .filter_map(|t| Reference::parse(t).ok())
            .map(|r| r.familiar())
            .collect()
    }

    /// Sum of the layer blob sizes.
    pub fn size(&self) -> u64 {
        self.parsed.layers().iter().map(|l| l.size()).sum()
    }
}

/// Every tagged image, one entry per manifest (tags grouped).
pub fn all(store: &Store) -> Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    for (name, desc) in store.tags()? {
        let digest = Digest::from_oci(desc.digest()).map_err(image::ImageError::from)?;
        if let Some(f) = out.iter_mut().find(|f| f.manifest_digest == digest) {
            f.tags.push(name);
            continue;
        }
        let mut f = load(store, desc)?;
        f.tags.push(name);
        out.push(f);
    }
    Ok(out)
}

fn load(store: &Store, manifest: Descriptor) -> Result<Found> {
    let manifest_digest = Digest::from_oci(manifest.digest()).map_err(image::ImageError::from)?;
    let parsed = image::read_manifest(store, &manifest_digest)
        .with_context(|| format!("reading manifest {manifest_digest}"))?
        .value;
    let id = Digest::from_oci(parsed.config().digest()).map_err(image::ImageError::from)?;
    let config = image::read_config(store, &id)
        .with_context(|| format!("reading config {id}"))?
        .value;
    Ok(Found {
        manifest,
        parsed,
        manifest_digest,
        id,
        config,
        tags: Vec::new(),
    })
}

/// Finds an image by name (`app`, `app:1`, `docker.io/library/app:1`) or by ID (`sha256:…`
/// or a unique prefix of at least 4 hex digits).
pub fn find(store: &Store, what: &str) -> Result<Found> {
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    let looks_like_id = hex.len() >= 4
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if let Ok(r) = Reference::parse(what) {
        if let Some(desc) = store.resolve(&r.to_string())? {
            let mut f = load(store, desc)?;
            f.tags = all(store)?
                .into_iter()
                .find(|x| x.manifest_digest == f.manifest_digest)
                .map(|x| x.tags)
                .unwrap_or_default();
            return Ok(f);
        }
    }
    if looks_like_id {
        let mut hits: Vec<Found> = all(store)?
            .into_iter()
            .filter(|f| f.id.hex().starts_with(hex) || f.manifest_digest.hex().starts_with(hex))
            .collect();
        match hits.len() {
            1 => return Ok(hits.remove(0)),
            0 => {}
            n => bail!("{what:?} matches {n} images; give more of the ID"),
        }
    }
    bail!("image {what:?} not found (see `kiln images`)")
}

/// Docker's short size notation, three significant digits: `4.19MB`, `812kB`, `0B`.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", units[i])
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2024-01-02T03:04:05.678Z`).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+']).next()?;
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.split('.').next()?.parse::<i64>().ok()?;
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// `3 minutes ago`, as docker prints ages.
pub fn ago(created: Option<&str>) -> String {
    let Some(t) = created.and_then(parse_rfc3339) else {
        return "N/A".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let s = (now - t).max(0);
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=604_799 => (s / 86_400, "day"),
        604_800..=2_591_999 => (s / 604_800, "week"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    if n == 1 {
        format!("{} {unit} ago", if unit == "hour" { "An" } else { "1" })
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_000), "1kB");
        assert_eq!(human_size(4_190_000), "4.19MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.12Z"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
