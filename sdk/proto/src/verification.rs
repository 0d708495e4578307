//! Which results get re-executed, and how much a device is trusted.
//!
//! For every accepted receipt the control plane evaluates its VRF ([`crate::vrf`]) on
//! [`selection_input`]: the network, the job and the BLAKE3 of the receipt, which commits to
//! the output. The executor fixed all of that before it could learn the outcome, and without
//! the control plane's secret key it cannot compute the VRF, so it cannot tell which of its
//! results will be checked. The job is checked when the first 8 bytes of the VRF output, read
//! as a big-endian integer, fall below `rate · 2^64` ([`is_selected`]). Anyone holding the
//! public key can re-run this decision from the proof ([`Selection::verify`]).
//!
//! The rate adapts per device ([`CheckPolicy`]), like BOINC's adaptive replication: a new
//! device, or one that just failed a check, is checked at the initial rate; every few
//! consecutive passed checks halve it, down to a floor that is never zero.

use crate::vrf::{VrfError, VrfOutput, VrfProof, VrfPublicKey};
use crate::{Blake3Hash, JobId, NetworkId, RunReceipt};
use serde::{Deserialize, Serialize};

/// Domain separation of the VRF input.
pub const SELECTION_DOMAIN: &[u8] = b"mesh/v1/check-selection";
/// Rates are in parts per million.
pub const PPM: u32 = 1_000_000;

/// BLAKE3 of a receipt's CBOR encoding (the form executors sign).
pub fn receipt_hash(receipt: &RunReceipt) -> Blake3Hash {
    Blake3Hash::of(&crate::cbor::to_vec(receipt).expect("receipts encode"))
}

/// The VRF input for the receipt `receipt_hash` of `job` in `network`.
pub fn selection_input(network: &NetworkId, job: &JobId, receipt_hash: &Blake3Hash) -> Vec<u8> {
    let mut alpha = SELECTION_DOMAIN.to_vec();
    for part in [network.to_string(), job.to_string()] {
        alpha.push(part.len() as u8);
        alpha.extend_from_slice(part.as_bytes());
    }
    alpha.extend_from_slice(receipt_hash.as_bytes());
    alpha
}

/// Whether a VRF output selects its job at `rate_ppm` (parts per million).
pub fn is_selected(output: &VrfOutput, rate_ppm: u32) -> bool {
    let draw = u64::from_be_bytes(output.0[..8].try_into().expect("8 bytes"));
    let threshold = (u128::from(rate_ppm.min(PPM)) << 64) / u128::from(PPM);
    u128::from(draw) < threshold
}

/// The published decision for one receipt: enough to check it offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Selection {
    /// The check rate applied to the executor at that time, in parts per million.
    pub rate_ppm: u32,
    /// BLAKE3 of the receipt's CBOR encoding.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub receipt_hash: Blake3Hash,
    /// The VRF proof (hex, 80 bytes).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub proof: VrfProof,
    /// The VRF output (hex, 64 bytes).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub output: VrfOutput,
    /// Whether the job was selected for re-execution.
    pub selected: bool,
}

/// Why a published selection does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectionError {
    /// The receipt is not the one the selection was computed for.
    #[error("the selection was computed for another receipt")]
    WrongReceipt,
    /// The proof does not verify.
    #[error(transparent)]
    Vrf(#[from] VrfError),
    /// The stated output is not the proof's.
    #[error("the stated VRF output is not the proof's")]
    WrongOutput,
    /// The stated decision does not follow from the output and rate.
    #[error("the stated decision does not follow from the VRF output and the rate")]
    WrongDecision,
}

impl Selection {
    /// Check the selection of `receipt` for `job` in `network` against the control plane's
    /// VRF public key: the proof verifies, the output is the proof's, the decision follows.
    pub fn verify(
        &self,
        key: &VrfPublicKey,
        network: &NetworkId,
        job: &JobId,
        receipt: &RunReceipt,
    ) -> Result<(), SelectionError> {
        if receipt_hash(receipt) != self.receipt_hash {
            return Err(SelectionError::WrongReceipt);
        }
        let output = key.verify(
            &selection_input(network, job, &self.receipt_hash),
            &self.proof,
        )?;
        if output != self.output {
            return Err(SelectionError::WrongOutput);
        }
        if is_selected(&output, self.rate_ppm) != self.selected {
            return Err(SelectionError::WrongDecision);
        }
        Ok(())
    }
}

/// What the control plane knows of a device's checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckRecord {
    /// Checks passed since the device joined.
    pub passed: u32,
    /// Checks failed since the device joined.
    pub failed: u32,
    /// Checks passed since its last failure.
    pub consecutive_passed: u32,
}

impl CheckRecord {
    /// The trust score: the mean of a Beta(passed + 1, failed + 1) reputation, where a failure
    /// also wipes the passes before it. A new device has 0.5; it approaches 1 with passed
    /// checks; one failure drops it to at most 1/3.
    pub fn trust(&self) -> f64 {
        let passed = f64::from(self.consecutive_passed);
        (passed + 1.0) / (passed + f64::from(self.failed) + 2.0)
    }

    /// The record after a passed check.
    pub fn pass(self) -> Self {
        CheckRecord {
            passed: self.passed + 1,
            consecutive_passed: self.consecutive_passed + 1,
            ..self
        }
    }

    /// The record after a dispute nobody could settle: no failure is recorded, but the passes
    /// since the last failure no longer count, so the device is trusted and checked like a new
    /// one again.
    pub fn suspect(self) -> Self {
        CheckRecord {
            consecutive_passed: 0,
            ..self
        }
    }

    /// The record after a failed check.
    pub fn fail(self) -> Self {
        CheckRecord {
            failed: self.failed + 1,
            consecutive_passed: 0,
            ..self
        }
    }
}

/// How often a device's results are re-executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckPolicy {
    /// Rate for a new device or one that just failed, in ppm.
    pub initial_ppm: u32,
    /// The rate halves after this many consecutive passed checks.
    pub halve_every: u32,
    /// The lowest rate, in ppm (never zero).
    pub floor_ppm: u32,
    /// Failed checks after which a device is quarantined.
    pub quarantine_after: u32,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            initial_ppm: 500_000,
            halve_every: 3,
            floor_ppm: 10_000,
            quarantine_after: 2,
        }
    }
}

impl CheckPolicy {
    /// The check rate for a device with this record, in ppm.
    pub fn rate_ppm(&self, record: &CheckRecord) -> u32 {
        let halvings = record.consecutive_passed / self.halve_every.max(1);
        let rate = self.initial_ppm.checked_shr(halvings).unwrap_or(0);
        rate.max(self.floor_ppm.max(1)).min(PPM)
    }

    /// Whether a device with this record is to be quarantined.
    pub fn quarantined(&self, record: &CheckRecord) -> bool {
        record.failed >= self.quarantine_after.max(1)
    }
}

/// How many ringers (items with known answers) go into a batched job.
///
/// On average one ringer per `items_per_ringer` real items, so the extra compute is
/// `1 / items_per_ringer` whatever the batch size: a batch of 16 gets one, a batch of 24 one
/// or two, a single item one with probability 1/16. One per 16 (rather than 32) keeps a
/// whole-job cheater's detection within 200 jobs above 99% down to batches of 8, at about 9%
/// extra compute with the checks (see the `verification` bench).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RingerPolicy {
    /// Real items per ringer (0: no ringers).
    pub items_per_ringer: u32,
}

impl Default for RingerPolicy {
    fn default() -> Self {
        RingerPolicy {
            items_per_ringer: 16,
        }
    }
}

impl RingerPolicy {
    /// Ringers for a job of `items` real items; `draw` is uniform in [0, 1) and must be
    /// secret from the executor.
    pub fn count(&self, items: usize, draw: f64) -> usize {
        if self.items_per_ringer == 0 || items == 0 {
            return 0;
        }
        let exact = items as f64 / f64::from(self.items_per_ringer);
        exact.floor() as usize + usize::from(draw < exact.fract())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrf::VrfSecretKey;

    fn receipt(output: &[u8]) -> RunReceipt {
        RunReceipt {
            job: None,
            ticket: None,
            component: Blake3Hash::of(b"component"),
            models: vec![],
            input: Blake3Hash::of(b"input"),
            output: Blake3Hash::of(output),
            backend: "tract".into(),
            timings: Default::default(),
        }
    }

    #[test]
    fn selection_is_verifiable_and_binds_the_receipt() {
        let key = VrfSecretKey::from_seed([7; 32]);
        let (network, job) = (NetworkId::from_bytes([1; 16]), JobId::from_bytes([2; 16]));
        let receipt = receipt(b"out");
        let hash = receipt_hash(&receipt);
        let proof = key.prove(&selection_input(&network, &job, &hash));
        let output = proof.to_hash().unwrap();
        let selection = Selection {
            rate_ppm: 500_000,
            receipt_hash: hash,
            proof,
            output,
            selected: is_selected(&output, 500_000),
        };
        selection
            .verify(&key.public_key(), &network, &job, &receipt)
            .unwrap();
        assert_eq!(
            selection.verify(&key.public_key(), &network, &job, &self::receipt(b"other")),
            Err(SelectionError::WrongReceipt)
        );
        let flipped = Selection {
            selected: !selection.selected,
            ..selection.clone()
        };
        assert_eq!(
            flipped.verify(&key.public_key(), &network, &job, &receipt),
            Err(SelectionError::WrongDecision)
        );
        let other_job = JobId::from_bytes([3; 16]);
        assert!(matches!(
            selection.verify(&key.public_key(), &network, &other_job, &receipt),
            Err(SelectionError::Vrf(VrfError::InvalidProof))
        ));
        let other_key = VrfSecretKey::from_seed([8; 32]).public_key();
        assert!(
            selection
                .verify(&other_key, &network, &job, &receipt)
                .is_err()
        );
    }

    #[test]
    fn selection_frequency_follows_the_rate() {
        let key = VrfSecretKey::from_seed([9; 32]);
        let network = NetworkId::from_bytes([1; 16]);
        let mut selected = 0;
        for i in 0..2000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let alpha = selection_input(&network, &JobId::from_bytes(id), &Blake3Hash::of(b"r"));
            let output = key.prove(&alpha).to_hash().unwrap();
            selected += usize::from(is_selected(&output, 100_000));
        }
        // 10% of 2000: 200, binomial sd about 13.
        assert!((140..260).contains(&selected), "{selected}");
        let zero = VrfOutput([0; 64]);
        let max = VrfOutput([0xff; 64]);
        assert!(is_selected(&zero, 1) && !is_selected(&zero, 0));
        assert!(is_selected(&max, PPM) && !is_selected(&max, PPM - 1));
    }

    #[test]
    fn rate_adapts_and_never_reaches_zero() {
        let policy = CheckPolicy::default();
        let mut record = CheckRecord::default();
        assert_eq!(policy.rate_ppm(&record), policy.initial_ppm);
        assert_eq!(record.trust(), 0.5);
        for _ in 0..100 {
            record = record.pass();
        }
        assert_eq!(policy.rate_ppm(&record), policy.floor_ppm);
        assert!(record.trust() > 0.99);
        record = record.fail();
        assert_eq!(policy.rate_ppm(&record), policy.initial_ppm);
        assert!(record.trust() <= 1.0 / 3.0);
        assert!(!policy.quarantined(&record));
        assert!(policy.quarantined(&record.fail()));
        let zero = CheckPolicy {
            floor_ppm: 0,
            ..policy
        };
        assert!(zero.rate_ppm(&record.pass().pass().pass().pass().pass().pass()) > 0);
    }

    #[test]
    fn ringers_cost_a_fixed_share() {
        let policy = RingerPolicy::default();
        assert_eq!(policy.count(16, 0.99), 1);
        assert_eq!(policy.count(32, 0.0), 2);
        assert_eq!(policy.count(24, 0.49), 2);
        assert_eq!(policy.count(24, 0.51), 1);
        assert_eq!(policy.count(1, 0.01), 1);
        assert_eq!(policy.count(1, 0.5), 0);
        assert_eq!(policy.count(0, 0.0), 0);
        assert_eq!(
            RingerPolicy {
                items_per_ringer: 0
            }
            .count(100, 0.0),
            0
        );
    }
}
