use coffer_crypto::shamir::{self, Share};
use coffer_crypto::{CryptoError, RootKey, RootKeyCheck};

/// Shares submitted so far during an unseal. Held in memory only; wiped on reset and drop.
#[derive(Debug, Default)]
pub struct ShamirProgress {
    shares: Vec<Share>,
}

/// What one submitted share did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Accepted; `have` of the threshold so far.
    Pending { have: usize },
    /// The quorum rebuilt the right key.
    Unsealed(RootKey),
    /// The quorum was complete but rebuilt a key that fails the check: progress is reset.
    WrongShares,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("the share is malformed (check for typos)")]
    Malformed,
    #[error("this share was already submitted")]
    Duplicate,
}

impl ShamirProgress {
    pub fn have(&self) -> usize {
        self.shares.len()
    }

    pub fn reset(&mut self) {
        self.shares.clear();
    }

    /// Add one share (its text form). On reaching `threshold` the key is rebuilt and checked;
    /// whatever the result, the collected shares are wiped.
    pub fn submit(
        &mut self,
        text: &str,
        threshold: usize,
        check: &RootKeyCheck,
    ) -> Result<SubmitOutcome, SubmitError> {
        let share = Share::parse(text).map_err(|_| SubmitError::Malformed)?;
        if self.shares.iter().any(|s| s.id() == share.id()) {
            return Err(SubmitError::Duplicate);
        }
        self.shares.push(share);
        if self.shares.len() < threshold {
            return Ok(SubmitOutcome::Pending {
                have: self.shares.len(),
            });
        }
        let rebuilt = shamir::combine(&self.shares);
        self.reset();
        match rebuilt {
            Ok(key) if key.matches(check) => Ok(SubmitOutcome::Unsealed(key)),
            Ok(_) | Err(CryptoError::Combine) => Ok(SubmitOutcome::WrongShares),
            Err(_) => Ok(SubmitOutcome::WrongShares),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseals_with_threshold_and_resets_on_wrong_shares() {
        let root = RootKey::generate();
        let check = root.check_value().unwrap();
        let shares: Vec<String> = shamir::split(&root, 5, 3)
            .unwrap()
            .iter()
            .map(|s| s.to_text().to_string())
            .collect();
        let other: Vec<String> = shamir::split(&RootKey::generate(), 5, 3)
            .unwrap()
            .iter()
            .map(|s| s.to_text().to_string())
            .collect();

        let mut p = ShamirProgress::default();
        assert!(matches!(
            p.submit(&shares[0], 3, &check),
            Ok(SubmitOutcome::Pending { have: 1 })
        ));
        assert_eq!(
            p.submit(&shares[0], 3, &check).err(),
            Some(SubmitError::Duplicate)
        );
        assert_eq!(
            p.submit("garbage", 3, &check).err(),
            Some(SubmitError::Malformed)
        );
        assert!(matches!(
            p.submit(&shares[1], 3, &check),
            Ok(SubmitOutcome::Pending { have: 2 })
        ));
        // A share from another split completes the count but fails the check.
        assert!(matches!(
            p.submit(&other[2], 3, &check),
            Ok(SubmitOutcome::WrongShares)
        ));
        assert_eq!(p.have(), 0);

        for s in &shares[2..4] {
            assert!(matches!(
                p.submit(s, 3, &check),
                Ok(SubmitOutcome::Pending { .. })
            ));
        }
        match p.submit(&shares[4], 3, &check) {
            Ok(SubmitOutcome::Unsealed(k)) => assert_eq!(k.expose_secret(), root.expose_secret()),
            other => panic!("expected unseal, got {other:?}"),
        }
        assert_eq!(p.have(), 0);
    }
}
