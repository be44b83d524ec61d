//! `tollgate demo`: runs the real `tollgate-controller` and four `tollgate-agent` processes on
//! loopback and narrates a qualification a release manager would do by hand, ending in a gate
//! that fails on one overheating node and a promotion it refuses.
//!
//! With `--rollout` it goes on: the release is qualified at `production` on the three cool
//! nodes, then rolled onto a simulated production fleet of 12 more agents in 3 racks, in waves;
//! then a second site of 4 agents, one with an XID in wave 2, halts and rolls back that wave.
//!
//! The demo is also a smoke test of the whole product: anything unexpected (a child exiting, a
//! gate that does not fail the way it must) stops it with a clear message and a non-zero exit.

use crate::args::{DemoArgs, ReportFormat};
use crate::client::{Controller, Target};
use crate::commands::{gate, node, plan, promote, release, report, rollout, run as runs};
use crate::output::Format;
use anyhow::{Context as _, bail};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tollgate_proto::v1 as pb;

const RELEASE: &str = "r550-u3";
const MILESTONE: &str = "lab-qual";
const PLAN: &str = "gpu-qual";
/// The versions simulated nodes report by default, so the inventory rule passes.
const DRIVER: &str = "550.54.15";
const VBIOS: &str = "96.00.89.00.01";
const NODES: [&str; 4] = ["lab-1", "lab-2", "lab-3", "lab-4"];
/// The node started with the over-temp fault; the gate must fail on it and on it alone.
const HOT_NODE: &str = "lab-4";
/// The gate rule kind the hot node must fail.
const TELEMETRY_KIND: &str = "telemetry";

// Embedded so that the demo runs from any directory, not only from a checkout.
const PLAN_YAML: &str = include_str!("../../examples/plan-demo.yaml");
const GATE_YAML: &str = include_str!("../../examples/gate-lab-qual.yaml");

/// The rollout act: the production gate, the procedure and rollback plans, the rollout file.
const PRODUCTION: &str = "production";
const PRODUCTION_GATE_YAML: &str = r#"# The production gate of the demo: the qualification passed on the three cool nodes, which
# stayed below their slowdown temperature and ran the release's versions.
milestone: production
description: Production readiness (demo)
rules:
  - steps-passed:
      plan: gpu-qual
      steps: [versions, stress]
      min-nodes: 3
  - telemetry:
      field: gpu_temp_c
      aggregate: max
      condition: "< 88"
  - inventory-matches-release: {}
"#;
const FLASH_PLAN_YAML: &str = r#"# What each production node goes through in the demo's rollout (simulated: nothing is flashed).
name: flash-and-soak
description: Flash the release and soak (simulated GPUs)
selector:
  role: prod
steps:
  - name: versions
    kind: inventory-check
    timeout: 30s
  - name: flash
    kind: exec
    command: [sh, -c, "echo 'flashing driver and VBIOS (simulated)'; sleep 1"]
    timeout: 1m
"#;
const ROLLBACK_PLAN_YAML: &str = r#"# How a production node goes back to the previous release in the demo (simulated).
name: flash-previous
description: Flash the previous release back (simulated GPUs)
selector:
  role: prod
steps:
  - name: flash-back
    kind: exec
    command: [sh, -c, "echo 'flashing the previous release (simulated)'; sleep 1"]
    timeout: 1m
"#;
const ROLLOUT_YAML: &str = r#"# The demo's rollout: one canary, then a quarter of the fleet, then the rest; never more than
# one node of a rack in procedure at once.
name: prod-demo
description: Simulated production fleet of the demo
selector: {role: prod}
waves:
  - count: 1
  - percent: 25
  - percent: 100
procedure:
  plan: flash-and-soak
rollback:
  plan: flash-previous
health:
  - steps-passed: {max-failed: 0}
  - no-events: {xid: [48, 79]}
soak: 1s
limits:
  max-concurrent: {rack: 1}
"#;
/// The simulated production fleet: `prod-01`..`prod-12`, racks `r1`..`r3` in turn.
const PROD_NODES: usize = 12;
const RACKS: usize = 3;
const FLEET: &str = "role=prod";

/// Marks a directory as the demo's own, so that recreating it never deletes anything else.
const MARKER: &str = ".tollgate-demo";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const NODES_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(200);

const SIMULATED_BANNER: &str = concat!(
    "  +--------------------------------------------------------------+\n",
    "  |  Simulated GPUs: numbers are made up                         |\n",
    "  |  (the processes, gRPC, scheduling and gate are all real)     |\n",
    "  +--------------------------------------------------------------+",
);

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        data_dir,
        keep_running,
        rollout: with_rollout,
    } = args;
    let started = Instant::now();
    let controller_bin = find_binary("tollgate-controller")?;
    let agent_bin = find_binary("tollgate-agent")?;
    let dirs = DemoDirs::prepare(&data_dir)?;
    println!(
        "Tollgate demo: one controller and {} agents on loopback. Everything lives in {}/ \
         (emptied and recreated on every run).",
        NODES.len(),
        data_dir.display()
    );
    println!("{SIMULATED_BANNER}");

    let mut children = Children::default();
    let outcome = tokio::select! {
        result = walk_through(&mut children, &controller_bin, &agent_bin, &dirs, with_rollout) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let outcome = match outcome {
        Ok(url) if keep_running => {
            println!(
                "\nThe controller and agents keep running: export TOLLGATE_CONTROLLER={url} \
                 TOLLGATE_CA_FILE={}/pki/ca.pem and try other commands. Ctrl-C stops them.",
                dirs.root.display()
            );
            // Failures are reported the moment they happen; a wait that fails just ends it.
            tokio::signal::ctrl_c().await.ok();
            Ok(())
        }
        other => other.map(|_| ()),
    };
    println!(
        "\nstopping {} agents and the controller (logs in {})",
        children.running.len().saturating_sub(1),
        dirs.shown.join("logs").display()
    );
    children.stop().await;
    outcome?;
    println!("{SIMULATED_BANNER}");
    println!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The demo's directories: `shown` as the user gave it (for messages and narrated commands),
/// `root` absolute (for children).
struct DemoDirs {
    shown: PathBuf,
    root: PathBuf,
}

impl DemoDirs {
    /// Empties and recreates the data directory, but only one a previous demo made (or an empty
    /// one): `--data-dir ~` must never delete a home directory.
    fn prepare(dir: &Path) -> anyhow::Result<Self> {
        if dir.exists() {
            let is_previous = dir.join(MARKER).exists();
            let is_empty = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
            if !is_previous && !is_empty {
                bail!(
                    "{} exists and was not made by `tollgate demo`; pass --data-dir with a new or empty directory",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join(MARKER),
            "made by `tollgate demo`; the next demo run deletes this directory\n",
        )
        .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self {
            shown: dir.to_path_buf(),
            root,
        })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
}

/// The demo proper; returns the controller URL. Children are started into `children` so the
/// caller stops them however this ends.
async fn walk_through(
    children: &mut Children,
    controller_bin: &Path,
    agent_bin: &Path,
    dirs: &DemoDirs,
    with_rollout: bool,
) -> anyhow::Result<String> {
    // A throwaway lab CA: the controller signs its server certificate with it, the agents
    // and this CLI trust it, so every connection of the demo is TLS.
    let pki = dirs.root.join("pki");
    let made = Command::new(controller_bin)
        .args(["ca", "init", "--dir"])
        .arg(&pki)
        .output()
        .await
        .context("running tollgate-controller ca init")?;
    if !made.status.success() {
        bail!(
            "tollgate-controller ca init failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    let ca_file = pki.join("ca.pem");
    // The controller, on a port the OS picks; it writes the address once it listens.
    let addr_file = dirs.root.join("controller.addr");
    let dashboard_file = dirs.root.join("dashboard.addr");
    note(&format!(
        "starting tollgate-controller (log: {})",
        dirs.shown.join("logs/controller.log").display()
    ));
    children.spawn(
        "controller",
        Command::new(controller_bin)
            .arg("serve")
            // No configuration file: a host's /etc/tollgate/controller.toml (its database,
            // its tokens) must not reach the demo.
            .args(["--config", "/dev/null"])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--addr-file")
            .arg(&addr_file)
            // The web dashboard, on a port of its own, with the same TLS.
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--http-addr-file")
            .arg(&dashboard_file)
            .arg("--data-dir")
            .arg(dirs.root.join("controller"))
            .arg("--ca-dir")
            .arg(&pki)
            .args(["--lease-grace", "10s"]),
        &dirs.log("controller"),
    )?;
    let url = wait_for_addr(children, &addr_file).await?;
    let target = Target {
        url: url.clone(),
        ca_file: Some(ca_file.clone()),
    };
    let controller = wait_for_health(children, &target).await?;
    note(&format!("controller serving at {url}"));
    let dashboard = wait_for_addr(children, &dashboard_file).await?;
    note(&format!(
        "dashboard at {dashboard}/ (no API token is configured, so from this host you are \
         anonymous; the certificate is from the demo's lab CA, {}: trust it or accept the \
         browser's warning)",
        ca_file.display()
    ));

    note(&format!(
        "enrolling and starting {} tollgate-agent processes ({}), 8 simulated H100 GPUs each; {HOT_NODE} with an over-temp fault",
        NODES.len(),
        NODES.join(", ")
    ));
    let lab_labels = [("sku", "hgx-h100"), ("site", "demo")];
    for name in NODES {
        let faults: &[&str] = if name == HOT_NODE {
            &["over-temp"]
        } else {
            &[]
        };
        let agent = DemoAgent {
            bin: agent_bin,
            url: &url,
            ca_file: &ca_file,
            name,
            labels: &lab_labels,
            faults,
        };
        agent.start(children, &controller, dirs).await?;
    }

    say(&format!(
        "export TOLLGATE_CONTROLLER={url} TOLLGATE_CA_FILE={}",
        ca_file.display()
    ));
    set_up(&controller, dirs).await?;
    run_plan(children, &controller, dirs).await?;
    decide_and_report(&controller, dirs).await?;
    say("tollgate status");
    let status = crate::commands::status::render(
        &controller,
        crate::args::StatusArgs {
            customer: None,
            since: "7d".to_owned(),
            format: "markdown".to_owned(),
            minutes: false,
        },
    )
    .await
    .context("rendering the status report")?;
    print!("{status}");
    children.check_alive()?;
    if with_rollout {
        qualify_for_production(children, &controller, dirs).await?;
        let agents = Agents {
            bin: agent_bin,
            url: &url,
            ca_file: &ca_file,
        };
        roll_out(children, &controller, &agents, dirs).await?;
        halt_and_roll_back(children, &controller, &agents, dirs).await?;
        children.check_alive()?;
    }
    Ok(url)
}

/// How the demo starts agents.
struct Agents<'a> {
    bin: &'a Path,
    url: &'a str,
    ca_file: &'a Path,
}

/// One demo agent to start: its node name, labels and simulated faults.
struct DemoAgent<'a> {
    bin: &'a Path,
    url: &'a str,
    ca_file: &'a Path,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
    faults: &'a [&'a str],
}

impl DemoAgent<'_> {
    /// Enrolls the node and starts its `tollgate-agent` with 8 simulated GPUs.
    async fn start(
        &self,
        children: &mut Children,
        controller: &Controller,
        dirs: &DemoDirs,
    ) -> anyhow::Result<()> {
        let token_file = enroll_token(controller, dirs, self.name, self.labels).await?;
        let mut command = Command::new(self.bin);
        command
            // No configuration file: a node's /etc/tollgate/agent.toml must not reach the demo.
            .args(["--config", "/dev/null"])
            .arg("--controller")
            .arg(self.url)
            .arg("--ca-file")
            .arg(self.ca_file)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--node", self.name]);
        for (key, value) in self.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        command
            .args(["--gpus", "sim:8"])
            .arg("--state-dir")
            .arg(dirs.root.join("agents").join(self.name));
        for fault in self.faults {
            command.args(["--fault", fault]);
        }
        children.spawn(self.name, &mut command, &dirs.log(self.name))
    }
}

/// The rollout act, part one: a rollout needs a release that passed its `production` gate.
/// The hot node is cordoned (it goes to repair) and the release is qualified at `production`
/// on the three others.
async fn qualify_for_production(
    children: &mut Children,
    controller: &Controller,
    dirs: &DemoDirs,
) -> anyhow::Result<()> {
    note(&format!(
        "the rollout: {RELEASE} must pass its {PRODUCTION} gate first; {HOT_NODE} goes to repair \
         and the other three lab nodes qualify it"
    ));
    say(&format!("tollgate node cordon {HOT_NODE}"));
    let cordoned = crate::client::answer(
        controller
            .nodes()
            .set_cordon(pb::SetCordonRequest {
                name: HOT_NODE.to_owned(),
                cordoned: true,
            })
            .await,
    )?;
    println!("node {} is {}", cordoned.name, cordoned.state);

    let gate_path = dirs.root.join("gate-production.yaml");
    std::fs::write(&gate_path, PRODUCTION_GATE_YAML)
        .with_context(|| format!("writing {}", gate_path.display()))?;
    let shown_gate = dirs
        .shown
        .join("gate-production.yaml")
        .display()
        .to_string();
    say(&format!("tollgate gate apply -f {shown_gate}"));
    let policy = gate::apply(controller, &shown_gate, PRODUCTION_GATE_YAML.to_owned())
        .await
        .context("applying the production gate")?;
    print!("{}", gate::format_applied(&policy));

    say(&format!(
        "tollgate run start --release {RELEASE} --plan {PLAN} --milestone {PRODUCTION} --watch"
    ));
    let started = runs::start(controller, RELEASE, PLAN, Some(PRODUCTION), false)
        .await
        .context("starting the production qualification")?;
    print!("{}", runs::format_started(&started));
    let cool = NODES.len() - 1;
    if started.jobs.len() != cool {
        bail!(
            "the production run selected {} nodes, expected the {cool} cool ones",
            started.jobs.len()
        );
    }
    follow_run(children, controller, dirs, &started.id).await?;

    say(&format!(
        "tollgate gate show --release {RELEASE} --milestone {PRODUCTION}"
    ));
    let decision = gate::evaluate(controller, RELEASE, Some(PRODUCTION))
        .await
        .context("evaluating the production gate")?;
    print!("{}", gate::format_decision(&decision));
    if decision.verdict != "passed" {
        bail!(
            "the production gate is {}, expected passed: {}",
            decision.verdict,
            decision.summary
        );
    }
    Ok(())
}

/// The rollout act, part two: 12 simulated production nodes in 3 racks; the release rolls
/// onto them in waves, one node per rack at once, followed live, then shown.
async fn roll_out(
    children: &mut Children,
    controller: &Controller,
    agents: &Agents<'_>,
    dirs: &DemoDirs,
) -> anyhow::Result<()> {
    let names: Vec<String> = (1..=PROD_NODES).map(|i| format!("prod-{i:02}")).collect();
    note(&format!(
        "enrolling and starting {PROD_NODES} more tollgate-agent processes, the production \
         fleet ({}..{}, {FLEET}, racks r1..r{RACKS}), 8 simulated H100 GPUs each",
        names[0],
        names[PROD_NODES - 1]
    ));
    let nodes = start_fleet(children, controller, agents, dirs, "prod", &names, None).await?;
    say(&format!("tollgate node list --selector {FLEET}"));
    print!("{}", node::format_node_table(&nodes, crate::clock::now()));

    let mut shown = Vec::new();
    for (file, yaml) in [
        ("plan-flash-and-soak.yaml", FLASH_PLAN_YAML),
        ("plan-flash-previous.yaml", ROLLBACK_PLAN_YAML),
        ("rollout-demo.yaml", ROLLOUT_YAML),
    ] {
        let path = dirs.root.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        shown.push(dirs.shown.join(file).display().to_string());
    }
    for (file, yaml) in [
        (&shown[0], FLASH_PLAN_YAML),
        (&shown[1], ROLLBACK_PLAN_YAML),
    ] {
        say(&format!("tollgate plan apply -f {file}"));
        let applied = plan::apply(controller, file, yaml.to_owned())
            .await
            .with_context(|| format!("applying {file}"))?;
        print!("{}", plan::format_applied(&applied));
    }

    let rollout_file = &shown[2];
    say(&format!("tollgate rollout validate {rollout_file}"));
    let spec = tollgate_domain::rollout::parse_rollout(rollout_file, ROLLOUT_YAML)
        .map_err(|problems| anyhow::anyhow!("the demo rollout file is invalid: {problems}"))?;
    print!("{}", rollout::format_spec(rollout_file, &spec));

    let done = start_and_watch(controller, dirs, FLEET, rollout_file).await?;
    if done.phase != "completed" {
        bail!(
            "rollout {} ended {}, expected completed",
            done.id,
            done.phase
        );
    }
    println!(
        "rolled {RELEASE} onto {PROD_NODES} simulated production nodes in {} waves",
        done.waves.len()
    );
    Ok(())
}

/// Enrolls and starts the agents `names` with `site=SITE`, `role=prod` and racks `r1`.. in
/// turn, `xid_node` with an XID 79 under its first load; waits until they are ready.
async fn start_fleet(
    children: &mut Children,
    controller: &Controller,
    agents: &Agents<'_>,
    dirs: &DemoDirs,
    site: &str,
    names: &[String],
    xid_node: Option<&str>,
) -> anyhow::Result<Vec<pb::Node>> {
    for (i, name) in names.iter().enumerate() {
        let rack = format!("r{}", i % RACKS + 1);
        let labels = [
            ("sku", "hgx-h100"),
            ("site", site),
            ("role", "prod"),
            ("rack", rack.as_str()),
        ];
        let faults: &[&str] = if xid_node == Some(name.as_str()) {
            &["xid=79"]
        } else {
            &[]
        };
        let agent = DemoAgent {
            bin: agents.bin,
            url: agents.url,
            ca_file: agents.ca_file,
            name,
            labels: &labels,
            faults,
        };
        agent.start(children, controller, dirs).await?;
    }
    wait_for_nodes(children, controller, &format!("site={site}"), names).await
}

/// The second act: a second site of 4 simulated nodes, one of which (in wave 2) reports an
/// XID 79 under its first load. The wave's health fails, the rollout halts naming the node
/// and the rule, and the controller rolls back the halted wave's updated nodes (the canary's
/// wave passed and keeps the release).
async fn halt_and_roll_back(
    children: &mut Children,
    controller: &Controller,
    agents: &Agents<'_>,
    dirs: &DemoDirs,
) -> anyhow::Result<()> {
    let names: Vec<String> = (1..=4).map(|i| format!("prod-b{i}")).collect();
    let xid_node = "prod-b2";
    note(&format!(
        "a second production site: {} more agents ({}..{}, site=prod-b), 8 simulated GPUs \
         each; {xid_node}, in wave 2, reports a simulated XID 79 (GPU fell off the bus) \
         under its first load",
        names.len(),
        names[0],
        names[names.len() - 1]
    ));
    start_fleet(
        children,
        controller,
        agents,
        dirs,
        "prod-b",
        &names,
        Some(xid_node),
    )
    .await?;
    let fleet = "role=prod,site=prod-b";
    let rollout_file = dirs.shown.join("rollout-demo.yaml").display().to_string();
    let done = start_and_watch(controller, dirs, fleet, &rollout_file).await?;
    children.check_alive()?;
    let Some(halt) = &done.halt else {
        bail!("rollout {} ended {} without a halt", done.id, done.phase);
    };
    let named = halt
        .failures
        .iter()
        .any(|failure| failure.nodes.iter().any(|node| node == xid_node));
    if done.phase != "rolled-back" || halt.wave != 1 || !named {
        bail!(
            "rollout {} ended {} (halted at wave {}), expected rolled back after a halt at \
             wave 2 naming {xid_node}",
            done.id,
            done.phase,
            halt.wave + 1
        );
    }
    let later: Vec<&str> = done
        .waves
        .iter()
        .skip(2)
        .flat_map(|wave| &wave.nodes)
        .filter(|node| !node.run.is_empty())
        .map(|node| node.node.as_str())
        .collect();
    if !later.is_empty() {
        bail!(
            "wave 3 started on {} although wave 2 halted",
            later.join(", ")
        );
    }
    println!(
        "the XID on {xid_node} halted the rollout at wave 2; wave 3 never started, and wave \
         2's updated nodes were rolled back (the canary's wave passed and keeps the release)"
    );
    Ok(())
}

/// Starts the demo rollout over `fleet`, follows it until it ended and shows it.
async fn start_and_watch(
    controller: &Controller,
    dirs: &DemoDirs,
    fleet: &str,
    rollout_file: &str,
) -> anyhow::Result<pb::Rollout> {
    say(&format!(
        "tollgate rollout start --release {RELEASE} --fleet {fleet} -f {rollout_file}"
    ));
    let mut client = controller.rollouts();
    let started = crate::client::answer(
        client
            .start_rollout(pb::StartRolloutRequest {
                release: RELEASE.to_owned(),
                fleet: fleet.to_owned(),
                file: ROLLOUT_YAML.to_owned(),
                file_name: rollout_file.to_owned(),
            })
            .await,
    )
    .context("starting the demo rollout")?;
    print!("{}", rollout::format_rollout(&started));

    say(&format!("tollgate rollout watch {}", started.id));
    let watched = tokio::time::timeout(ROLLOUT_TIMEOUT, async {
        let mut stream = crate::client::answer(
            client
                .watch_rollout(pb::GetRolloutRequest {
                    id: started.id.clone(),
                })
                .await,
        )?;
        let mut last = String::new();
        while let Some(update) = stream
            .message()
            .await
            .map_err(crate::client::RpcError::from)?
        {
            let line = rollout::format_progress_line(&update);
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        anyhow::Ok(())
    })
    .await;
    match watched {
        Ok(result) => result?,
        Err(_) => bail!(
            "rollout {} did not end within {}s; see the agent logs in {}",
            started.id,
            ROLLOUT_TIMEOUT.as_secs(),
            dirs.shown.join("logs").display()
        ),
    }

    say(&format!("tollgate rollout show {}", started.id));
    let done = crate::client::answer(
        client
            .get_rollout(pb::GetRolloutRequest {
                id: started.id.clone(),
            })
            .await,
    )?;
    print!("{}", rollout::format_rollout(&done));
    Ok(done)
}

/// Creates the release and applies the plan and the gate, as a release manager would.
async fn set_up(controller: &Controller, dirs: &DemoDirs) -> anyhow::Result<()> {
    say(&format!(
        "tollgate release create {RELEASE} --component driver={DRIVER} --component vbios={VBIOS} \
         --description \"driver 550 update 3\""
    ));
    let created = release::create(
        controller,
        pb::CreateReleaseRequest {
            name: RELEASE.to_owned(),
            components: vec![
                release::parse_component(&format!("driver={DRIVER}"))?,
                release::parse_component(&format!("vbios={VBIOS}"))?,
            ],
            description: "driver 550 update 3".to_owned(),
        },
        release::ReleasePlan::default(),
    )
    .await
    .context("creating the demo release")?;
    print!("{}", release::format_release(&created));

    let plan_path = dirs.root.join("plan-demo.yaml");
    let gate_path = dirs.root.join("gate-lab-qual.yaml");
    std::fs::write(&plan_path, PLAN_YAML)
        .with_context(|| format!("writing {}", plan_path.display()))?;
    std::fs::write(&gate_path, GATE_YAML)
        .with_context(|| format!("writing {}", gate_path.display()))?;
    let shown_plan = dirs.shown.join("plan-demo.yaml").display().to_string();
    let shown_gate = dirs.shown.join("gate-lab-qual.yaml").display().to_string();

    say(&format!("tollgate plan apply -f {shown_plan}"));
    let applied = plan::apply(controller, &shown_plan, PLAN_YAML.to_owned())
        .await
        .context("applying the demo plan")?;
    print!("{}", plan::format_applied(&applied));

    say(&format!("tollgate gate apply -f {shown_gate}"));
    let policy = gate::apply(controller, &shown_gate, GATE_YAML.to_owned())
        .await
        .context("applying the demo gate")?;
    print!("{}", gate::format_applied(&policy));

    Ok(())
}

/// Waits for every node, runs the plan on them and follows the run until it finished.
async fn run_plan(
    children: &mut Children,
    controller: &Controller,
    dirs: &DemoDirs,
) -> anyhow::Result<()> {
    note(&format!(
        "waiting for {} nodes to register and be ready",
        NODES.len()
    ));
    let names: Vec<String> = NODES.iter().map(|name| (*name).to_owned()).collect();
    let nodes = wait_for_nodes(children, controller, "site=demo", &names).await?;
    say("tollgate node list --selector site=demo");
    print!("{}", node::format_node_table(&nodes, crate::clock::now()));

    say(&format!(
        "tollgate run start --release {RELEASE} --plan {PLAN} --milestone {MILESTONE} --watch"
    ));
    let started = runs::start(controller, RELEASE, PLAN, Some(MILESTONE), false)
        .await
        .context("starting the demo run")?;
    print!("{}", runs::format_started(&started));
    if started.jobs.len() != NODES.len() {
        bail!(
            "the run selected {} nodes, expected {} ({}); is a node unhealthy? see `tollgate node list`",
            started.jobs.len(),
            NODES.len(),
            NODES.join(", ")
        );
    }
    follow_run(children, controller, dirs, &started.id).await
}

/// Follows run `id` live until it ended; it must have finished.
async fn follow_run(
    children: &mut Children,
    controller: &Controller,
    dirs: &DemoDirs,
    id: &str,
) -> anyhow::Result<()> {
    let ended = tokio::time::timeout(RUN_TIMEOUT, runs::watch(controller, id, Format::Text))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "run {id} did not end within {}s; see the agent logs in {}",
                RUN_TIMEOUT.as_secs(),
                dirs.shown.join("logs").display()
            )
        })??;
    children.check_alive()?;
    if ended.state != "finished" {
        bail!("run {} ended {}, expected finished", ended.id, ended.state);
    }
    Ok(())
}

/// Shows the gate's decision (it must fail on the hot node only), tries the promotion it
/// refuses, and writes the HTML and Markdown reports.
async fn decide_and_report(controller: &Controller, dirs: &DemoDirs) -> anyhow::Result<()> {
    say(&format!(
        "tollgate gate show --release {RELEASE} --milestone {MILESTONE}"
    ));
    let decision = gate::evaluate(controller, RELEASE, Some(MILESTONE))
        .await
        .context("evaluating the demo gate")?;
    print!("{}", gate::format_decision(&decision));
    check_decision(&decision)
        .map_err(|problem| anyhow::anyhow!("the demo gate did not decide as it must: {problem}"))?;

    say(&format!("tollgate promote --release {RELEASE}"));
    match promote::promote(controller, RELEASE).await? {
        Err(refusal) => println!("promotion refused: {refusal}"),
        Ok(_) => bail!("the controller promoted {RELEASE} although its gate failed"),
    }

    for (format, extension) in [(ReportFormat::Html, "html"), (ReportFormat::Markdown, "md")] {
        let file = format!("{RELEASE}-{MILESTONE}.{extension}");
        say(&format!(
            "tollgate report --release {RELEASE} --milestone {MILESTONE} --format {} -o {}",
            format.as_str(),
            dirs.shown.join(&file).display()
        ));
        let written = report::render_to_file(
            controller,
            RELEASE,
            Some(MILESTONE),
            format,
            None,
            Some(dirs.root.join(&file)),
        )
        .await
        .with_context(|| format!("rendering the {} report", format.as_str()))?;
        println!("wrote {}", dirs.shown.join(&file).display());
        println!("decision digest: {}", written.decision_digest);
    }
    Ok(())
}

/// Checks the decision the demo must reach: failed, because the telemetry rule failed on the
/// hot node and on no other, while every other rule passed.
pub fn check_decision(decision: &pb::Decision) -> Result<(), String> {
    if decision.verdict != "failed" {
        return Err(format!(
            "the verdict is {}, expected failed ({})",
            decision.verdict, decision.summary
        ));
    }
    let mut problems = Vec::new();
    let mut saw_telemetry = false;
    for rule in &decision.rules {
        if rule.kind == TELEMETRY_KIND {
            saw_telemetry = true;
            if rule.verdict != "failed" || rule.failing_nodes != [HOT_NODE] {
                problems.push(format!(
                    "rule {} is {} with failing nodes [{}], expected failed on {HOT_NODE} only",
                    rule.rule_id,
                    rule.verdict,
                    rule.failing_nodes.join(", ")
                ));
            }
        } else if rule.verdict != "passed" {
            problems.push(format!(
                "rule {} is {}, expected passed: {}",
                rule.rule_id, rule.verdict, rule.reason
            ));
        }
    }
    if !saw_telemetry {
        problems.push("the decision has no telemetry rule".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Finds a sibling binary next to this executable (how cargo and release archives lay them
/// out), then on PATH.
fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the tollgate executable")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(name);
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(found);
    }
    bail!(
        "{name} not found next to {}; build all binaries with `cargo build --workspace --bins`",
        dir.display()
    )
}

/// Enrolls demo node `name` (`tollgate node enroll`): writes its one-time bootstrap token
/// to a file the agent reads; returns the file.
async fn enroll_token(
    controller: &Controller,
    dirs: &DemoDirs,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    let response = crate::client::answer(
        controller
            .nodes()
            .enroll_node(pb::EnrollNodeRequest {
                node_name: name.to_owned(),
                labels: labels
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
                ttl_seconds: 600,
            })
            .await,
    )?;
    let path = dirs.root.join("agents").join(format!("{name}.token"));
    std::fs::create_dir_all(dirs.root.join("agents"))
        .with_context(|| format!("creating {}", dirs.root.join("agents").display()))?;
    std::fs::write(&path, response.bootstrap_token)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits for the controller to write its address; returns it as a URL.
async fn wait_for_addr(children: &mut Children, addr_file: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        children.check_alive()?;
        if let Ok(text) = std::fs::read_to_string(addr_file) {
            // Accept `host:port` or a URL; the file may be caught half-written, so only an
            // address that parses counts.
            let text = text.trim();
            let bare = text
                .strip_prefix("https://")
                .unwrap_or(text)
                .trim_end_matches('/');
            if bare.parse::<std::net::SocketAddr>().is_ok() {
                return Ok(format!("https://{bare}"));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the controller wrote no address to {} within {}s; see its log",
                addr_file.display(),
                STARTUP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the controller answers gRPC health with SERVING.
async fn wait_for_health(children: &mut Children, target: &Target) -> anyhow::Result<Controller> {
    let url = &target.url;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let last_problem;
        children.check_alive()?;
        match Controller::connect(target).await {
            Ok(controller) => {
                let mut health = HealthClient::new(controller.channel());
                match health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                        return Ok(controller);
                    }
                    Ok(response) => {
                        last_problem = format!("health status {}", response.get_ref().status);
                    }
                    Err(status) => last_problem = status.message().to_owned(),
                }
            }
            Err(error) => last_problem = format!("{error:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "the controller at {url} did not become healthy within {}s: {last_problem}",
                STARTUP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every node of `names` is registered and ready; returns the nodes `selector`
/// takes.
async fn wait_for_nodes(
    children: &mut Children,
    controller: &Controller,
    selector: &str,
    names: &[String],
) -> anyhow::Result<Vec<pb::Node>> {
    let deadline = Instant::now() + NODES_TIMEOUT;
    let selector = node::parse_selector(&[selector.to_owned()])?;
    loop {
        children.check_alive()?;
        let nodes = node::list(controller, selector.clone(), Default::default()).await?;
        let n_ready = names
            .iter()
            .filter(|name| {
                nodes
                    .iter()
                    .any(|node| node.name == **name && node.state == "ready")
            })
            .count();
        if n_ready == names.len() {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            bail!(
                "only {n_ready} of {} nodes were ready after {}s:\n{}",
                names.len(),
                NODES_TIMEOUT.as_secs(),
                node::format_node_table(&nodes, crate::clock::now())
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Prints a narrated command the way a release manager would type it.
fn say(command: &str) {
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m$ {command}\x1b[0m");
    } else {
        println!("\n$ {command}");
    }
}

/// Prints what the demo itself is doing (not a command a person would type).
fn note(text: &str) {
    println!("# {text}");
}

/// The demo's child processes, in start order. Each sits in its own process group, so a Ctrl-C
/// at the terminal reaches only the demo, which then stops them in order: agents first, so they
/// do not log a vanished controller, then the controller. `kill_on_drop` is the backstop if the
/// demo itself dies first.
#[derive(Default)]
struct Children {
    running: Vec<(String, PathBuf, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, command: &mut Command, log: &Path) -> anyhow::Result<()> {
        let stdout = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("opening log file {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Plain logs: ANSI colours make the log files hard to read and grep.
            .env("NO_COLOR", "1")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.running
            .push((name.to_owned(), log.to_path_buf(), child));
        Ok(())
    }

    /// Fails if any child has exited, quoting the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, log, child) in &mut self.running {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("checking on {name}"))?
            {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{name} exited unexpectedly ({status}); the end of {}:\n{}",
                    log.display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to the agents, wait; then the same for the controller. Whatever does not stop
    /// within a few seconds is killed.
    async fn stop(&mut self) {
        let mut all = std::mem::take(&mut self.running);
        let controller: Vec<_> = all.drain(..all.len().min(1)).collect();
        for group in [all, controller] {
            for (_, _, child) in &group {
                terminate(child);
            }
            for (name, _, mut child) in group {
                match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        eprintln!(
                            "{name} did not stop within {}s; killing it",
                            STOP_TIMEOUT.as_secs()
                        );
                        // Already stopping; a failure here means it is gone.
                        child.kill().await.ok();
                    }
                }
            }
        }
    }
}

fn terminate(child: &Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // ESRCH means it already exited, which is what we want.
        kill(Pid::from_raw(pid), Signal::SIGTERM).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: &str, verdict: &str, failing: &[&str]) -> pb::RuleDecision {
        pb::RuleDecision {
            rule_id: kind.into(),
            kind: kind.into(),
            verdict: verdict.into(),
            failing_nodes: failing.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn decision(verdict: &str, rules: Vec<pb::RuleDecision>) -> pb::Decision {
        pb::Decision {
            verdict: verdict.into(),
            rules,
            ..Default::default()
        }
    }

    #[test]
    fn the_demo_decision_must_fail_on_the_hot_node_alone() {
        let good = decision(
            "failed",
            vec![
                rule("steps-passed", "passed", &[]),
                rule("telemetry", "failed", &["lab-4"]),
            ],
        );
        assert_eq!(check_decision(&good), Ok(()));
        let passed = decision("passed", vec![rule("telemetry", "passed", &[])]);
        assert!(check_decision(&passed).is_err());
        let wrong_node = decision(
            "failed",
            vec![rule("telemetry", "failed", &["lab-1", "lab-4"])],
        );
        assert!(check_decision(&wrong_node).is_err());
        let other_failure = decision(
            "failed",
            vec![
                rule("inventory-matches-release", "failed", &["lab-2"]),
                rule("telemetry", "failed", &["lab-4"]),
            ],
        );
        let problem = check_decision(&other_failure).expect_err("inventory failed too");
        assert!(problem.contains("inventory-matches-release"), "{problem}");
    }

    #[test]
    fn the_embedded_examples_are_valid() {
        let plan = tollgate_domain::plan::parse_plan("plan-demo.yaml", PLAN_YAML).expect("valid");
        assert_eq!(plan.name, PLAN);
        let gate =
            tollgate_domain::gate::parse_gate("gate-lab-qual.yaml", GATE_YAML).expect("valid");
        assert_eq!(gate.milestone, MILESTONE);
    }

    #[test]
    fn the_rollout_act_files_are_valid() {
        let gate = tollgate_domain::gate::parse_gate("gate-production.yaml", PRODUCTION_GATE_YAML)
            .expect("valid");
        assert_eq!(gate.milestone, PRODUCTION);
        for (file, yaml, name) in [
            ("flash.yaml", FLASH_PLAN_YAML, "flash-and-soak"),
            ("previous.yaml", ROLLBACK_PLAN_YAML, "flash-previous"),
        ] {
            let plan = tollgate_domain::plan::parse_plan(file, yaml).expect("valid");
            assert_eq!(plan.name, name);
        }
        tollgate_domain::rollout::parse_rollout("rollout-demo.yaml", ROLLOUT_YAML).expect("valid");
    }

    #[test]
    fn only_demo_or_empty_directories_are_recreated() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let dir = scratch.path().join("demo");
        DemoDirs::prepare(&dir).expect("a new directory");
        std::fs::write(dir.join("leftover"), "x").expect("write");
        DemoDirs::prepare(&dir).expect("a previous demo is recreated");
        assert!(!dir.join("leftover").exists());
        let foreign = scratch.path().join("foreign");
        std::fs::create_dir_all(&foreign).expect("mkdir");
        std::fs::write(foreign.join("precious"), "x").expect("write");
        assert!(DemoDirs::prepare(&foreign).is_err());
        assert!(foreign.join("precious").exists());
    }
}
