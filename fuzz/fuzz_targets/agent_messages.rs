//! The agent's messages as the controller receives them: prost decoding of `AgentEvent`,
//! `StepResult`, `TelemetryBatch` and `RegisterRequest`, then the controller's conversion
//! (`tollgate-wire`) to domain values or its bounds check. Neither may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tollgate_domain::result::StepResult;
use tollgate_proto::v1 as proto;
use tollgate_wire::{Enrollment, FromProto, bounded};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the message, the rest is its encoding.
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(proto::AgentEvent { event: Some(event) }) = proto::AgentEvent::decode(bytes) {
                let _ = bounded(event);
            }
        }
        1 => {
            if let Ok(result) = proto::StepResult::decode(bytes) {
                let _ = StepResult::from_proto(result);
            }
        }
        2 => {
            if let Ok(batch) = proto::TelemetryBatch::decode(bytes) {
                let _ = bounded(batch);
            }
        }
        _ => {
            if let Ok(request) = proto::RegisterRequest::decode(bytes) {
                let _ = Enrollment::try_from(request);
            }
        }
    }
});
