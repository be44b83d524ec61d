//! Tollgate's one proto ↔ domain conversion, used by the controller, the agent and the CLI.
//!
//! Every conversion destructures its source completely, so a field added to the proto (or the
//! domain) fails to compile here until it is handled. Incoming messages are checked field by
//! field against `tollgate_domain::limits` and the domain's parsers, and every bad field is
//! collected in one [`FieldErrors`]; each crate maps the resulting [`InvalidFields`] to its own
//! error type in one place (the controller's `grpc/status.rs` to `InvalidArgument` with
//! `google.rpc.BadRequest` details).
//!
//! Timestamps follow one convention ([`time`]): on the wire, nanoseconds are always within
//! `0..1_000_000_000` as `google.protobuf.Timestamp` requires; a leap second is sent as the last
//! nanosecond of the second before it, and a wire timestamp outside that range is refused.
//!
//! [`daemon_config`] is the daemons' shared edge of another kind: their configuration files,
//! merged under the command line and the environment, for the controller and the agent alike.
//!
//! **Boundary:** conversions and wire-level checks only (bounds, required fields, names). No
//! I/O (but `daemon_config` reading a daemon's configuration file), no tokio, no tonic server
//! code, no sqlx; decisions stay in `tollgate-domain`.

pub mod access;
pub mod bounds;
pub mod daemon_config;
pub mod decision_parts;
pub mod fields;
pub mod fleet;
pub mod gate;
pub mod json;
pub mod note;
pub mod page;
pub mod plan;
pub mod prometheus;
pub mod release;
pub mod report;
pub mod result;
pub mod time;

#[cfg(test)]
mod round_trip;

pub use access::{api_token_to_proto, token_request};
pub use bounds::{Bounded, bounded, check_labels, split_plan_ref};
pub use fields::{FieldErrors, InvalidFields, LISTED_PROBLEMS};
pub use fleet::Enrollment;
pub use plan::{Assignment, gate_policy_to_proto, plan_to_proto, step_to_proto};
pub use release::{NewRelease, release_to_proto};
pub use report::report_key_to_proto;
pub use result::{gpu_event_for_upload, result_summary, step_result_for_upload};
pub use time::{timestamp_from_proto, timestamp_to_proto};

use std::collections::{BTreeMap, HashMap};

// Both sides are foreign types (tollgate-proto, tollgate-domain), so the orphan rule rules out
// `From`/`TryFrom` between them in either crate; these traits play that part.

/// A domain value's wire form.
pub trait ToProto {
    /// The wire type.
    type Proto;
    /// Converts; never fails.
    fn to_proto(&self) -> Self::Proto;
}

/// A domain value from its wire form, checking every field.
pub trait FromProto: Sized {
    /// The wire type.
    type Proto;
    /// Converts, naming every bad field on failure.
    fn from_proto(proto: Self::Proto) -> Result<Self, InvalidFields>;
}

/// An optional text: the proto's empty string means absent.
fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A proto map in the domain's order.
fn sorted<V>(map: HashMap<String, V>) -> BTreeMap<String, V> {
    map.into_iter().collect()
}

/// A domain map as the proto holds it.
fn unsorted<V: Clone>(map: &BTreeMap<String, V>) -> HashMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A count that travels as `u32`, saturated (no list that large is ever sent).
fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A duration on the wire in milliseconds, saturated.
fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
