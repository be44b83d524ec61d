//! End to end: `tollgate demo --rollout`, the real binaries. The ordinary demo refuses the
//! release at its lab gate; then the release is qualified at `production` on the cool nodes and
//! rolled onto 12 simulated production nodes in 3 waves, and the rollout completes.

use tollgate_tests::process::{text, workspace_binary};

#[test]
fn demo_rollout_rolls_the_release_onto_the_simulated_fleet_in_waves() {
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
    let show = stdout
        .split("$ tollgate rollout show ")
        .nth(1)
        .expect("the demo shows the rollout at the end");
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
    assert!(stdout.contains("Simulated GPUs"), "{stdout}");
}
