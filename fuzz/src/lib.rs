//! Properties the fuzz targets check beyond "does not panic". Run the targets with
//! `scripts/fuzz [SECONDS]` or `cargo +nightly fuzz run TARGET` from the repository root.
//!
//! The cheap properties: a located error points inside the input; whatever a parser accepts
//! is accepted by the next reader in the chain (a parsed plan's steps reach the agent
//! unchanged, a parsed result reaches the controller), because an input that one side takes
//! and the other refuses would be sent, refused and retried for ever.

use tollgate_domain::limits;
use tollgate_domain::result::{Measurement, SubResult};
use tollgate_domain::spec::SpecErrors;
use tollgate_wire::{FromProto, ToProto};

/// The number of lines a YAML reader may count in `source`: every line break YAML knows, plus
/// the line after the last one.
fn yaml_lines(source: &str) -> u64 {
    let mut lines = 1u64;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => lines += 1,
            _ => {}
        }
    }
    lines
}

/// Every error of a spec file has a message and, when located, a line and column inside it.
pub fn assert_located(source: &str, errors: &SpecErrors) {
    assert!(!errors.0.is_empty(), "a refused spec lists no error");
    let lines = yaml_lines(source);
    let chars = source.chars().count() as u64;
    for error in &errors.0 {
        assert!(
            !error.message.trim().is_empty(),
            "an error without a message: {error:?}"
        );
        assert!(
            error.line <= lines,
            "error at line {} of a {lines}-line input: {error}",
            error.line
        );
        assert!(
            error.column <= chars + 1,
            "error at column {} of a {chars}-character input: {error}",
            error.column
        );
    }
}

/// The controller takes every parsed test result, and no more of them than it keeps.
pub fn assert_controller_takes_subs(subs: &[SubResult]) {
    assert!(
        subs.len() <= limits::SUB_RESULTS.max,
        "{} sub-results, over the limit of {}",
        subs.len(),
        limits::SUB_RESULTS.max
    );
    for sub in subs {
        let back = SubResult::from_proto(sub.to_proto())
            .unwrap_or_else(|error| panic!("the controller refuses {sub:?}: {error}"));
        assert_eq!(&back, sub, "a sub-result changed on the wire");
    }
}

/// The controller takes every parsed measurement.
pub fn assert_controller_takes_measurement(measurement: &Measurement) {
    let back = Measurement::from_proto(measurement.to_proto())
        .unwrap_or_else(|error| panic!("the controller refuses {measurement:?}: {error}"));
    assert_eq!(&back, measurement, "a measurement changed on the wire");
}
