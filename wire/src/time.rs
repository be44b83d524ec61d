//! Timestamps on the wire, one convention for every crate.
//!
//! `google.protobuf.Timestamp` counts nanoseconds within `0..1_000_000_000` and has no leap
//! seconds, while a chrono timestamp may hold one (nanoseconds from 1e9 up). A leap second
//! goes on the wire as the last nanosecond of the second before it (order is kept, the
//! receiver accepts it); a wire timestamp whose nanoseconds are negative or 1e9 and more is
//! refused, never read as a leap second.

use crate::fields::FieldErrors;
use tollgate_domain::Timestamp;

/// The largest nanosecond count a wire timestamp holds.
const MAX_NANOS: u32 = 999_999_999;

/// A domain timestamp on the wire.
pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    let nanos = at.timestamp_subsec_nanos().min(MAX_NANOS);
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(nanos).expect("at most 999,999,999 fits an i32"),
    }
}

/// A wire timestamp as a domain one; `None` when its nanoseconds or seconds are out of range.
pub fn timestamp_from_proto(at: &prost_types::Timestamp) -> Option<Timestamp> {
    let nanos = u32::try_from(at.nanos).ok().filter(|n| *n <= MAX_NANOS)?;
    chrono::DateTime::from_timestamp(at.seconds, nanos)
}

impl FieldErrors {
    /// A required timestamp field; a missing or invalid one is recorded.
    pub fn required_timestamp(
        &mut self,
        field: &str,
        at: Option<prost_types::Timestamp>,
    ) -> Option<Timestamp> {
        match at {
            None => {
                self.add(field, "is missing");
                None
            }
            Some(at) => self.timestamp(field, &at),
        }
    }

    /// An optional timestamp field: absent is `None`, an invalid one is recorded.
    pub fn optional_timestamp(
        &mut self,
        field: &str,
        at: Option<prost_types::Timestamp>,
    ) -> Option<Timestamp> {
        at.and_then(|at| self.timestamp(field, &at))
    }

    fn timestamp(&mut self, field: &str, at: &prost_types::Timestamp) -> Option<Timestamp> {
        let converted = timestamp_from_proto(at);
        if converted.is_none() {
            self.add(
                field,
                format!("{}s {}ns is not a valid timestamp", at.seconds, at.nanos),
            );
        }
        converted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::at;

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let t = at(5) + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(t)), Some(t));
    }

    #[test]
    fn a_leap_second_goes_on_the_wire_as_the_last_nanosecond_before_it() {
        let leap = chrono::DateTime::from_timestamp(1_483_228_799, 1_250_000_000)
            .expect("chrono represents a leap second");
        let wire = timestamp_to_proto(leap);
        assert_eq!(
            (wire.seconds, wire.nanos),
            (1_483_228_799, 999_999_999),
            "a valid google.protobuf.Timestamp"
        );
        // ... and the receiving side accepts it, so a result ending in a leap second is kept.
        let back = timestamp_from_proto(&wire).expect("accepted");
        assert!(back < leap && leap - back < chrono::Duration::seconds(1));
    }

    #[test]
    fn nanoseconds_outside_a_second_are_refused_not_read_as_a_leap_second() {
        for nanos in [-1, 1_000_000_000, 1_500_000_000, i32::MAX] {
            let wire = prost_types::Timestamp {
                seconds: 1_483_228_799,
                nanos,
            };
            assert_eq!(timestamp_from_proto(&wire), None, "{nanos}");
        }
    }

    #[test]
    fn timestamp_fields_name_what_is_wrong() {
        let mut errors = FieldErrors::new();
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(errors.required_timestamp("started_at", None), None);
        assert_eq!(errors.optional_timestamp("since", None), None);
        assert_eq!(errors.optional_timestamp("until", Some(bad)), None);
        let invalid = errors.finish(()).expect_err("two problems");
        assert_eq!(invalid.fields(), ["started_at", "until"]);
        assert!(invalid.to_string().contains("started_at: is missing"));
        assert!(
            invalid
                .to_string()
                .contains("0s -1ns is not a valid timestamp")
        );
    }
}
