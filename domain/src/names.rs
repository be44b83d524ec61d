//! What every string enum shares. Their names (stored in the database, sent on the wire,
//! written in plan and gate files) come from `strum` derives with `serialize_all =
//! "kebab-case"`, the same rule serde uses for them; parsing an unknown name gives [`unknown`]'s
//! message. Every stored enum derives `EnumIter`, so lists of names (SQL `IN` lists, help texts)
//! are generated from the enum instead of copied by hand.

pub use strum::IntoEnumIterator;

/// The error for `text` that names no variant of `E`: the type, the text (quoted, bounded) and
/// every name it accepts.
pub fn unknown<E>(text: &str) -> String
where
    E: IntoEnumIterator + Into<&'static str>,
{
    let type_name = std::any::type_name::<E>();
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    format!(
        "unknown {short} {} (expected one of: {})",
        crate::limits::quote(text),
        names::<E>().join(", ")
    )
}

/// Every name of `E`, in declaration order.
pub fn names<E>() -> Vec<&'static str>
where
    E: IntoEnumIterator + Into<&'static str>,
{
    E::iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{GpuSourceKind, Health, NodeState};
    use crate::gate::{Aggregate, Direction, Stat, Verdict};
    use crate::job::JobState;
    use crate::limits::Unit;
    use crate::report_signature::Format;
    use crate::result::Outcome;
    use crate::telemetry::EventKind;
    use serde::{Serialize, de::DeserializeOwned};
    use std::fmt::{Debug, Display};
    use std::str::FromStr;

    /// Pins `E`'s names to `expected` (they are stored and sent, so they never change), and
    /// checks every variant goes through its name and back, by `FromStr`, `Display`,
    /// `as_str` and serde alike.
    fn round_trip<E>(expected: &[&str], as_str: fn(E) -> &'static str)
    where
        E: IntoEnumIterator
            + Into<&'static str>
            + FromStr<Err = String>
            + Display
            + Serialize
            + DeserializeOwned
            + Copy
            + PartialEq
            + Debug,
    {
        assert_eq!(names::<E>(), expected);
        for variant in E::iter() {
            let name = as_str(variant);
            assert_eq!(name.parse::<E>(), Ok(variant), "{name}");
            assert_eq!(variant.to_string(), name);
            let json = serde_json::to_string(&variant).expect("a unit variant serializes");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<E>(&json).ok(), Some(variant));
        }
        let error = "no-such-name".parse::<E>().expect_err("not a name");
        assert!(error.contains("'no-such-name'"), "{error}");
        assert!(error.contains(&expected.join(", ")), "{error}");
    }

    #[test]
    fn every_stored_name_round_trips() {
        round_trip::<JobState>(
            &[
                "pending",
                "assigned",
                "running",
                "passed",
                "failed",
                "error",
                "lost",
                "cancelled",
            ],
            JobState::as_str,
        );
        round_trip::<NodeState>(
            &[
                "ready",
                "busy",
                "cordoned",
                "draining",
                "maintenance",
                "unreachable",
                "retired",
            ],
            NodeState::as_str,
        );
        round_trip::<Health>(&["good", "suspect", "bad"], Health::as_str);
        round_trip::<GpuSourceKind>(&["nvml", "simulated"], GpuSourceKind::as_str);
        round_trip::<Outcome>(
            &["passed", "failed", "error", "skipped", "lost"],
            Outcome::as_str,
        );
        round_trip::<EventKind>(&["xid", "ecc-uncorrected", "gpu-lost"], EventKind::as_str);
        round_trip::<Verdict>(
            &[
                "passed",
                "failed",
                "waiting",
                "error",
                "waived",
                "not-applicable",
            ],
            Verdict::as_str,
        );
        round_trip::<Aggregate>(
            &["min", "max", "mean", "p5", "p50", "p95", "p99", "count"],
            Aggregate::as_str,
        );
        round_trip::<Stat>(&["min", "max", "mean", "p99", "last"], Stat::as_str);
        round_trip::<Direction>(&["higher-is-better", "lower-is-better"], Direction::as_str);
    }

    #[test]
    fn words_that_are_only_written_keep_their_names() {
        assert_eq!(names::<Format>(), ["json", "markdown", "html", "junit"]);
        assert_eq!(Format::Markdown.as_str(), "markdown");
        assert_eq!(names::<Unit>(), ["bytes", "items"]);
        assert_eq!(Unit::Items.as_str(), "items");
    }

    #[test]
    fn an_unknown_name_is_named_with_the_accepted_ones() {
        assert_eq!(
            "gone".parse::<NodeState>(),
            Err(
                "unknown NodeState 'gone' (expected one of: ready, busy, cordoned, draining, \
                 maintenance, unreachable, retired)"
                    .to_string()
            )
        );
        let long = "x".repeat(500);
        let error = long.parse::<Health>().expect_err("not a name");
        assert!(error.contains("(500 bytes)"), "{error}");
    }
}
