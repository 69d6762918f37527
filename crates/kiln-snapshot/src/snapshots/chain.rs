//! Chain IDs: the name of "these layers applied in this order".

use std::fmt;
use std::str::FromStr;

use kiln_oci::{Digest, DigestError};

/// The OCI chain ID of a stack of layers: `chainID(L0) = diffID(L0)` and
/// `chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))`.
///
/// Two stacks with the same chain ID give the same root filesystem, so snapshots are kept by
/// it: a layer shared by two images sits once on disk only if everything under it is shared
/// too, which is what overlay needs (a lower directory stands for its whole chain).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainId(Digest);

impl ChainId {
    /// Wraps a digest that already is a chain ID.
    pub fn new(digest: Digest) -> ChainId {
        ChainId(digest)
    }

    /// The chain ID of a bottom layer: its diffID.
    pub fn base(diff_id: &Digest) -> ChainId {
        ChainId(diff_id.clone())
    }

    /// The chain ID of the layer `diff_id` applied on top of this chain.
    pub fn child(&self, diff_id: &Digest) -> ChainId {
        let text = format!("{} {}", self.0, diff_id);
        ChainId(Digest::of(text.as_bytes()))
    }

    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// The 64 hex digits: the snapshot's directory name.
    pub fn hex(&self) -> &str {
        self.0.hex()
    }
}

/// The chain ID of each prefix of `diff_ids` (bottom layer first), in the same order.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<ChainId> {
    let mut out: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => ChainId::base(d),
            Some(parent) => parent.child(d),
        };
        out.push(next);
    }
    out
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", self.0)
    }
}

impl FromStr for ChainId {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<ChainId, DigestError> {
        Ok(ChainId(s.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        s.parse().unwrap()
    }

    /// Expected values computed independently with coreutils:
    /// `printf '%s %s' "$A" "$B" | sha256sum`. A and B are sha256("a") and sha256("b"); E is
    /// the diffID of the empty layer (1024 zero bytes), as Docker writes for empty steps.
    #[test]
    fn known_vector() {
        let a = d("sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
        let b = d("sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d");
        let e = d("sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef");
        let ids = chain_ids(&[a.clone(), b, e]);
        assert_eq!(ids[0].digest(), &a);
        assert_eq!(
            ids[1].to_string(),
            "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676"
        );
        assert_eq!(
            ids[2].to_string(),
            "sha256:3c587c8a11e388f284312b4205bdb78bf62fe93936606cc326fd9c31e0cf02c0"
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn parses_and_names_directories() {
        let c: ChainId = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
            .parse()
            .unwrap();
        assert_eq!(
            c.hex(),
            "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
        assert!("sha512:00".parse::<ChainId>().is_err());
    }
}
