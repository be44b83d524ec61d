//! Measurement lines (`@tollgate measure NAME VALUE [UNIT]` on a step's stdout): reading never
//! panics, a parsed value is finite, and the controller takes every measurement read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_agent::parse::measure::MeasureParser;

fuzz_target!(|data: &[u8]| {
    // The agent feeds stdout line by line, as bytes (a line need not be UTF-8).
    let mut parser = MeasureParser::new();
    for line in data.split(|&b| b == b'\n') {
        parser.feed(line, None);
    }
    let (measurements, _first_error) = parser.finish();
    for measurement in &measurements {
        assert!(measurement.value.is_finite());
        tollgate_fuzz::assert_controller_takes_measurement(measurement);
    }
});
