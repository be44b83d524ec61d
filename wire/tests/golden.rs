//! Agents keep working across a controller upgrade, and the other way round: the messages an
//! agent and a controller exchange, encoded once and kept in `proto/golden/`, must decode to
//! the same values with every later version of the contract (fields are only ever added).
//!
//! A golden file is never rewritten: a new field gets a new message (and file) here, made with
//! `TOLLGATE_BLESS=1 cargo test -p tollgate-wire --test golden`, which writes only the files
//! that do not exist yet.

use prost::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use tollgate_proto::v1;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/golden")
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn inventory() -> v1::Inventory {
    v1::Inventory {
        driver_version: "550.54.15".into(),
        cuda_driver_version: "12.4".into(),
        nvml_version: "12.550.54.15".into(),
        gpus: vec![v1::GpuInfo {
            index: 0,
            uuid: "GPU-0b8e3b6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            serial: Some("1650923012345".into()),
            pci_bus_id: "00000000:1B:00.0".into(),
            vbios_version: "96.00.89.00.01".into(),
            memory_total_mib: 81_559,
            ecc_enabled: Some(true),
            power_limit_w: Some(700.0),
            ..Default::default()
        }],
        components: HashMap::from([("cx7-fw".to_owned(), "28.39.1002".to_owned())]),
        gpu_source: "nvml".into(),
        hostname: "lab-a-r12-n3".into(),
    }
}

/// A kept message: its file name, its encoding now, and a check that says what is wrong with
/// bytes that do not decode to it (empty when they do).
type Kept = (&'static str, Vec<u8>, Box<dyn Fn(&[u8]) -> String>);

/// Every kept message: its file name, its encoding now, and the check that bytes decode to it.
/// Each map holds one entry, so that the encoding does not depend on hash order.
fn messages() -> Vec<Kept> {
    fn entry<M: Message + Default + std::fmt::Debug + 'static>(
        name: &'static str,
        message: M,
    ) -> Kept {
        let expected = format!("{message:?}");
        let check = move |bytes: &[u8]| -> String {
            match M::decode(bytes) {
                Ok(decoded) if format!("{decoded:?}") == expected => String::new(),
                Ok(decoded) => format!("decodes to {decoded:?}, not {expected}"),
                Err(error) => format!("does not decode: {error}"),
            }
        };
        (name, message.encode_to_vec(), Box::new(check))
    }
    vec![
        entry(
            "v1-register-request.bin",
            v1::RegisterRequest {
                node_name: "lab-a-r12-n3".into(),
                labels: HashMap::from([("sku".to_owned(), "hgx-h100".to_owned())]),
                inventory: Some(inventory()),
                agent_version: "0.1.0".into(),
                node_token: String::new(),
            },
        ),
        entry(
            "v1-enroll-request.bin",
            v1::EnrollRequest {
                node_name: "lab-a-r12-n3".into(),
                bootstrap_token: "tg-bootstrap-3f9c".into(),
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
            },
        ),
        entry(
            "v1-heartbeat.bin",
            v1::AgentEvent {
                event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat {
                    running_job_id: "job-7f3a".into(),
                    sent_at: at(1_767_225_600),
                    unsent_results: 1,
                    lease_epoch: 2,
                    step_index: Some(3),
                    attempt: 1,
                    commands_received: 4,
                    unsent_by_job: HashMap::from([("job-7f3a".to_owned(), 1)]),
                })),
            },
        ),
        entry(
            "v1-assign-job.bin",
            v1::ControllerCommand {
                command: Some(v1::controller_command::Command::AssignJob(v1::AssignJob {
                    job_id: "job-7f3a".into(),
                    run_id: "run-19c2".into(),
                    lease_epoch: 2,
                    release: "r550-u3".into(),
                    components: vec![v1::Component {
                        name: "driver".into(),
                        version: "550.54.15".into(),
                        artifact_uri: "https://artifacts.lab/driver-550.54.15.run".into(),
                        sha256: "ab".repeat(32),
                    }],
                    milestone: "lab-qual".into(),
                    plan_name: "gpu-qual".into(),
                    plan_version: "9d1e".into(),
                    steps: vec![
                        v1::StepSpec {
                            index: 0,
                            name: "versions".into(),
                            timeout_ms: 60_000,
                            retries: 0,
                            kind: Some(v1::step_spec::Kind::InventoryCheck(
                                v1::InventoryCheckStep {
                                    components: vec!["driver".into()],
                                },
                            )),
                        },
                        v1::StepSpec {
                            index: 1,
                            name: "membw".into(),
                            timeout_ms: 600_000,
                            retries: 1,
                            kind: Some(v1::step_spec::Kind::Exec(v1::ExecStep {
                                command: vec!["/opt/qual/membw".into(), "--all".into()],
                                env: HashMap::from([("SIZE".to_owned(), "8G".to_owned())]),
                                workdir: "/opt/qual".into(),
                            })),
                        },
                    ],
                })),
            },
        ),
        entry(
            "v1-step-result.bin",
            v1::StepResult {
                job_id: "job-7f3a".into(),
                step_index: 1,
                step_name: "membw".into(),
                attempt: 1,
                lease_epoch: 2,
                outcome: v1::Outcome::Failed as i32,
                exit_code: Some(1),
                started_at: at(1_767_225_600),
                finished_at: at(1_767_225_660),
                measurements: vec![v1::Measurement {
                    name: "membw_gbps".into(),
                    value: 2790.5,
                    unit: "GB/s".into(),
                }],
                events: vec![v1::GpuEvent {
                    gpu_index: 0,
                    gpu_uuid: "GPU-0b8e3b6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
                    kind: "xid".into(),
                    code: 79,
                    at: at(1_767_225_630),
                    detail: "GPU has fallen off the bus".into(),
                }],
                inventory: Some(inventory()),
                log_tail: "membw: 2790.5 GB/s < 2800\n".into(),
                message: "exit code 1".into(),
                sub_results: vec![v1::SubResult {
                    source: "junit".into(),
                    suite: "membw".into(),
                    name: "all-gpus".into(),
                    outcome: v1::Outcome::Failed as i32,
                    message: "below 2800".into(),
                    ..Default::default()
                }],
                inventory_at_end: Some(inventory()),
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn kept_messages_decode_to_the_same_values() {
    let bless = std::env::var_os("TOLLGATE_BLESS").is_some();
    let mut problems = Vec::new();
    for (name, encoded, check) in messages() {
        let path = golden_dir().join(name);
        let kept = match std::fs::read(&path) {
            Ok(kept) => kept,
            Err(_) if bless => {
                std::fs::write(&path, &encoded).expect("write a new golden file");
                encoded.clone()
            }
            Err(error) => {
                problems.push(format!(
                    "{}: {error} (a new message? make its file with TOLLGATE_BLESS=1)",
                    path.display()
                ));
                continue;
            }
        };
        let problem = check(&kept);
        if !problem.is_empty() {
            problems.push(format!("{name} {problem}"));
        }
        if kept != encoded {
            problems.push(format!(
                "{name}: this version encodes the same value differently ({} bytes kept, {} now)",
                kept.len(),
                encoded.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
