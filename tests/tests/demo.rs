//! End to end: `tollgate demo --rollout`, the real binaries. The ordinary demo refuses the
//! release at its lab gate; then the release is qualified at `production` on the cool nodes and
//! rolled onto 12 simulated production nodes in 3 waves, and the rollout completes. Then an XID
//! on a wave-2 node of a second site halts that site's rollout, naming the node and the rule,
//! and the halted wave's updated nodes are rolled back.

use tollgate_tests::process::{text, workspace_binary};

#[test]
fn demo_rollout_completes_in_waves_then_an_xid_halts_and_rolls_back() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data_dir = scratch.path().join("demo");
    let output = std::process::Command::new(workspace_binary("tollgate"))
        .arg("demo")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--rollout")
        .env("NO_COLOR", "1")
        .output()
        .expect("run tollgate demo --rollout");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "tollgate demo --rollout failed:\n{stdout}\n{}",
        text(&output.stderr)
    );
    // The ordinary demo still refuses the release at its lab gate.
    assert!(stdout.contains("promotion refused"), "{stdout}");
    // The production gate passed before the rollout started.
    assert!(
        stdout.contains("$ tollgate gate show --release r550-u3 --milestone production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("$ tollgate rollout start --release r550-u3 --fleet role=prod"),
        "{stdout}"
    );
    // Progress lines while it rolls, then the summary of a completed rollout.
    assert!(stdout.contains(" wave 1/3: "), "{stdout}");
    assert!(stdout.contains(" wave 3/3: "), "{stdout}");
    let mut shows = stdout.split("$ tollgate rollout show ").skip(1);
    let show = shows.next().expect("the demo shows the rollout");
    assert!(show.contains("phase:   completed"), "{show}");
    for i in 1..=12 {
        assert!(
            show.contains(&format!("prod-{i:02}")),
            "prod-{i:02}:\n{show}"
        );
    }
    assert!(
        stdout.contains("rolled r550-u3 onto 12 simulated production nodes in 3 waves"),
        "{stdout}"
    );
    // The second act: halted at wave 2 by the XID on prod-b2, that wave rolled back, the
    // canary's wave kept, wave 3 untouched.
    let halted = shows.next().expect("the demo shows the halted rollout");
    assert!(halted.contains("phase:   rolled-back"), "{halted}");
    assert!(halted.contains("halted at wave 2"), "{halted}");
    assert!(
        halted.contains("rule no-events failed on prod-b2"),
        "{halted}"
    );
    for (node, progress) in [
        ("prod-b1", "passed"),
        ("prod-b2", "rolled-back"),
        ("prod-b3", "waiting"),
        ("prod-b4", "waiting"),
    ] {
        assert!(
            halted
                .lines()
                .any(|line| line.contains(node) && line.contains(progress)),
            "{node} is not {progress}:\n{halted}"
        );
    }
    assert!(stdout.contains("Simulated GPUs"), "{stdout}");
}
