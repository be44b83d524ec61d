//! JUnit XML (the `junit` step kind): parsing never panics, an error's byte position lies
//! inside the report, and the controller takes every sub-result it yields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_agent::parse::junit::{self, JunitError};

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    match junit::parse(xml) {
        Ok(subs) => {
            tollgate_fuzz::assert_controller_takes_subs(&subs);
            let _ = junit::step_outcome(&subs, Some(0));
        }
        Err(JunitError::Xml { position, .. }) => {
            assert!(
                position <= xml.len() as u64,
                "error at byte {position} of a {}-byte report",
                xml.len()
            );
        }
        Err(JunitError::Empty) => {}
    }
});
