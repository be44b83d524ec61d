//! Gate YAML (`tollgate gate apply`): parsing never panics and errors point inside the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_domain::gate::parse_gate;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse_gate("gate.yaml", source) {
        tollgate_fuzz::assert_located(source, &errors);
    }
});
