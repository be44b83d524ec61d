//! `dcgmi diag -j` JSON (the `dcgm-diag` step kind): grading never panics and the controller
//! takes every sub-result it yields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_agent::parse::dcgm;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the diagnostic level the step ran at (1 to 4).
    let Some((&level, json)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    if let Ok(subs) = dcgm::parse(json, level % 4 + 1) {
        tollgate_fuzz::assert_controller_takes_subs(&subs);
        let _ = dcgm::step_outcome(&subs);
    }
});
