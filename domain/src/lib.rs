//! Tollgate's vocabulary and every decision it makes: plan and gate specs with validation,
//! node selection and scheduling, the job state machine and gate evaluation, and rollouts.
//!
//! **Boundary:** this crate does no I/O and never reads the clock; time is always an argument.
//! The controller loads facts, calls a function here, and persists what it returns.

pub mod access;
pub mod attestation;
pub mod audit;
pub mod enrollment;
pub mod fleet;
pub mod fleet_history;
pub mod gate;
pub mod health_plan;
pub mod ids;
pub mod issue;
pub mod job;
pub mod lease;
pub mod limits;
pub mod maintenance;
pub mod names;
pub mod node;
pub mod note;
pub mod plan;
pub mod projection;
pub mod rate;
pub mod release;
pub mod report_key;
pub mod report_signature;
pub mod reschedule;
pub mod result;
pub mod rollout;
pub mod run;
pub mod scheduler;
pub mod spec;
pub mod stats;
pub mod status_report;
pub mod target;
pub mod telemetry;
pub mod test_support;
pub mod waiver;

pub use ids::{JobId, NodeId, PlanVersion, ReleaseId, RolloutId, RunId};

/// A point in time, always UTC. The domain never makes one up: callers pass `now`.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Hex sha256 of the canonical JSON form of `value` (serde field order, sorted maps).
///
/// Every digest in Tollgate (plan versions, gate versions, decision inputs) goes through this
/// one function so that the same content always gives the same digest.
pub fn digest_json<T: serde::Serialize>(value: &T) -> String {
    hex::encode(digest_json_bytes(value))
}

/// The sha256 of [`digest_json`], as bytes.
pub fn digest_json_bytes<T: serde::Serialize>(value: &T) -> [u8; 32] {
    let mut writer = std::io::BufWriter::with_capacity(16 * 1024, HashWriter::default());
    // Serializing plain data structs to JSON cannot fail: no maps with non-string keys are
    // digested and no custom serializers return errors; the writer itself never fails.
    serde_json::to_writer(&mut writer, value).expect("digested values serialize to JSON");
    writer
        .into_inner()
        .map_err(|_| "flushing into a hasher")
        .expect("a hasher never fails a write")
        .finish()
}

/// Bytes written into a sha256: large evidence is serialized straight into the hash, never
/// held as one JSON buffer. Writes never fail.
#[derive(Default)]
pub struct HashWriter(sha2::Sha256);

impl HashWriter {
    /// The sha256 of everything written.
    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest as _;
        self.0.finalize().into()
    }
}

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
