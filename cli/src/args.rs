//! The command line: every command, flag and help text, as clap types.

use crate::output::OutputArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The controller address used when neither `--controller` nor `TOLLGATE_CONTROLLER` is given.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7800";

const AFTER_HELP: &str = "\
Output: every command that prints takes -o/--output text|json after the command, for example
`tollgate node list -o json`. JSON is the controller's answer with snake_case field names.
`tollgate report` is the one exception: there -o/--output names the file to write, --format
picks markdown, json, html or junit, and --json prints the summary line as JSON.

Errors: with -o json an error is JSON on stdout too, with the same exit code:
{\"error\": {\"code\": \"invalid_argument\", \"message\": \"...\", \"fields\": [{\"field\": \"...\",
\"message\": \"...\"}], \"exit_code\": 2}}. `code` is the controller's gRPC status in snake case,
`invalid_file` for a plan or gate file with problems, `error` otherwise.

Token and controller: --token, else TOLLGATE_TOKEN, else --token-file FILE, else the config
file's token_file. The config file is $XDG_CONFIG_HOME/tollgate/config.toml (else
~/.config/tollgate/config.toml), with lines `controller = \"URL\"` and `token_file = \"PATH\"`.

Exit codes: 0 ok; 1 other errors (including an unreachable controller and invalid plan or gate
files); 2 invalid argument; 3 failed precondition (for example a promotion the gate refuses, or
`gate check` on a failed gate); 4 not found; 5 `gate check` while the gate waits for evidence.";

/// Qualifies GPU firmware and driver releases on lab fleets and gates their promotion.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Controller gRPC address [default: the config file's `controller`, else
    /// http://127.0.0.1:7800].
    #[arg(long, global = true, env = "TOLLGATE_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,

    /// API token secret (sent as 'authorization: Bearer <secret>'). It shows in `ps`: prefer
    /// TOLLGATE_TOKEN, --token-file or the config file's `token_file`.
    #[arg(long, global = true, value_name = "SECRET")]
    pub token: Option<String>,

    /// A file holding the API token secret on its first line; refused unless only its owner
    /// may read it (chmod 600). Used when neither --token nor TOLLGATE_TOKEN is given.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the controller's certificate, for https://
    /// controllers (`ca.pem` from `tollgate-controller ca init`).
    #[arg(long, global = true, env = "TOLLGATE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lab nodes: list, show, cordon, drain, resume, retire, health, health plans.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Maintenance windows per label: no job starts on the nodes they cover while they last.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Releases: create, show, list.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Qualification plans: validate (offline), apply, show, list.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Gates: validate (offline), apply, show a release's decision.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Qualification runs: start, watch, show, list, cancel.
    #[command(subcommand)]
    Run(RunCommand),
    /// Rollouts of released builds onto production fleets in waves: validate (offline),
    /// start, show, list, watch, pause, resume, abort, skip-wave.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Moves a release past its current milestone, if its gate passed.
    Promote(PromoteArgs),
    /// Waives one rule of a release's gate with a reason, a ticket and an expiry.
    Waive(WaiveArgs),
    /// Waivers: list, revoke.
    #[command(subcommand)]
    Waiver(WaiverCommand),
    /// Moves a release back to an earlier milestone.
    Demote(DemoteArgs),
    /// Halts a release: it cannot be promoted or run until resumed.
    Halt(HaltArgs),
    /// Lifts a release's halt.
    Resume(ResumeArgs),
    /// Issues (failures sharing a signature): open, list, show, set, fix, wont-fix, reopen.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// The hash-chained audit log: list, verify.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API tokens (admin only): create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The weekly status report, per customer and release: target against projection,
    /// what passed, what blocks, waivers about to expire, risks; with --minutes, notes and
    /// action items.
    Status(StatusArgs),
    /// Meeting minutes: notes about a release, optionally action items (add, list, done).
    #[command(subcommand)]
    Note(NoteCommand),
    /// Writes the signed customer acceptance report of a release at a milestone; `report
    /// verify` checks a report file offline, `report public-key` prints the signing key.
    Report(ReportArgs),
    /// Starts a controller and four simulated agents on loopback and walks through a
    /// qualification that fails its gate.
    Demo(DemoArgs),
    /// Prints a shell completion script: `tollgate completions bash > /etc/bash_completion.d/tollgate`,
    /// `tollgate completions zsh > "${fpath[1]}/_tollgate"`, `tollgate completions fish >
    /// ~/.config/fish/completions/tollgate.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `tollgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates an API token and prints its secret, once: the controller keeps only its hash.
    Create {
        /// The token's name: the actor recorded on everything done with it.
        name: String,
        /// viewer, operator, release-manager, admin or customer.
        #[arg(long)]
        role: String,
        /// For --role customer: the value of the `customer` node label it sees.
        #[arg(long)]
        customer: Option<String>,
        /// How long the token is good for, for example 90d, 12h or 2w (at most a year).
        #[arg(long, value_name = "DURATION")]
        expires: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists API tokens made with `token create`, revoked and expired ones included; never
    /// their secrets.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revokes an API token: every later call carrying it is refused.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Lists nodes, optionally only those carrying every given label.
    List {
        /// Only nodes with this label (repeatable), for example --selector sku=hgx-h100.
        #[arg(long = "selector", short = 'l', value_name = "KEY=VALUE")]
        selectors: Vec<String>,
        /// Shows which driver, VBIOS and firmware each node runs (its inventory's
        /// components) and any drift from the rollout that updated it, instead of its state.
        #[arg(long)]
        components: bool,
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows one node with its inventory and GPUs.
    Show {
        /// Node name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stops scheduling new jobs on a node.
    Cordon {
        /// Node name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lets a cordoned node take jobs again (the same as `node resume`).
    Uncordon {
        /// Node name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stops scheduling new jobs on a node and lets its running job finish: the node is
    /// `draining` until that job ends, then `maintenance` until `node resume`.
    Drain {
        /// Node name.
        name: String,
        /// Why, for example --reason "replace PSU 2" (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// How long the running job may take, for example 30m or 2h: a job still running then
        /// is cancelled and started again on another eligible node. Without it the drain
        /// waits for the job however long it takes. Draining a draining node again moves
        /// the deadline.
        #[arg(long, value_name = "DURATION")]
        deadline: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Puts a node in `maintenance` (after a drain), `draining` or `cordoned` back in service.
    Resume {
        /// Node name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Retires a node for good: it takes no jobs and no operator changes again. Refused while
    /// a job is active on it or pending jobs wait for it.
    Retire {
        /// Node name.
        name: String,
        /// Why, for example --reason "chassis returned to the vendor" (required; recorded in
        /// the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sets a node's health by hand, with a reason (recorded in the audit log). Findings
    /// (a GPU lost, a failed health check, repeated harness errors) only make health worse;
    /// this is how a suspect or bad node is cleared.
    Health {
        /// Node name.
        name: String,
        /// The health: good, suspect or bad.
        #[arg(long)]
        set: String,
        /// Why, for example --reason "reseated GPU 3, dcgmi diag -r 3 passed".
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Makes a one-time bootstrap token that enrolls NODE (recorded in the audit log). It is
    /// printed once: put it in a file on the node and start the agent with
    /// --bootstrap-token-file FILE.
    Enroll {
        /// The node the token enrolls.
        name: String,
        /// The node's labels of record, KEY=VALUE,... (what runs select the node by; the
        /// agent's own --label values are kept as reported).
        #[arg(long, value_name = "KEY=VALUE,...", value_delimiter = ',')]
        labels: Vec<String>,
        /// How long the token works, for example 1h or 30m (at most 7d).
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        expires: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows a node's fleet telemetry history (what its agent samples while no step runs):
    /// per bucket and GPU, each field's mean with its smallest and largest sample.
    Telemetry {
        #[command(flatten)]
        args: TelemetryArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Periodic health checks: a plan run on every idle node it selects, every so often; a
    /// failed check makes a good node suspect (out of selection), a passing one clears it.
    #[command(subcommand, name = "health-plan")]
    HealthPlan(HealthPlanCommand),
    /// Revokes a node's certificates at once (recorded in the audit log): its connections
    /// and calls are refused and its open stream is closed. Enroll it again to readmit it.
    Revoke {
        /// Node name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// What `tollgate node telemetry` asks for.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct TelemetryArgs {
    /// Node name.
    pub name: String,
    /// How far back, for example 15m, 6h or 7d (the finest tier that reaches that far is
    /// read, unless --resolution says which).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub since: String,
    /// Only this GPU (NVML index).
    #[arg(long, value_name = "INDEX")]
    pub gpu: Option<u32>,
    /// Only these fields (repeatable; Tollgate or DCGM names). Default in text: GPU
    /// temperature, power, SM clock and utilization; in JSON: every field.
    #[arg(long = "field", value_name = "FIELD")]
    pub fields: Vec<String>,
    /// The tier by its bucket width, for example 10s or 1m.
    #[arg(long, value_name = "DURATION")]
    pub resolution: Option<String>,
    /// Most buckets (one per GPU and time), at most 2000.
    #[arg(long, default_value_t = 500)]
    pub limit: u32,
}

/// `tollgate node health-plan ...`
#[derive(Debug, Subcommand)]
pub enum HealthPlanCommand {
    /// Sets a plan as a health check (recorded in the audit log): from now on it runs on every
    /// idle node its selector matches (ready, connected, good or suspect, outside maintenance
    /// windows) once per period. Setting it again replaces the period, release and version.
    Set {
        /// The plan, NAME (its latest version) or NAME@VERSION.
        plan: String,
        /// The release the checks run against: the one the fleet runs (its components are
        /// what the steps see).
        #[arg(long)]
        release: String,
        /// How often each node is checked, for example 6h or 1d (1m to 90d).
        #[arg(long, value_name = "DURATION")]
        every: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists the health plans.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stops a plan's health checks (recorded in the audit log); checks on record stay.
    Remove {
        /// The plan's name.
        plan: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate maintenance ...`
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Opens a maintenance window (recorded in the audit log): no job starts on the nodes
    /// with the label from --from until --until. Running jobs go on; jobs waiting for those
    /// nodes start when the window ends.
    Add {
        /// The label whose nodes it covers, KEY=VALUE, for example rack=r12 or site=lab-a.
        #[arg(long, value_name = "KEY=VALUE")]
        label: String,
        /// When it starts: RFC 3339 (2026-12-06T02:00:00Z) or a date; now when left out.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// When it ends: RFC 3339 or a date (or give --for).
        #[arg(long, value_name = "TIME", conflicts_with = "duration")]
        until: Option<String>,
        /// How long it lasts from its start, for example 4h (instead of --until).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why, for example --reason "PDU swap" (required).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists the windows not over yet (current and upcoming).
    List {
        /// Also the windows that are over.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Ends a window now, or withdraws one not started yet (recorded in the audit log).
    End {
        /// The window's id (`tollgate maintenance list`).
        id: String,
        /// Why it ends early.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate release ...`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Registers a release from flags or from a YAML file.
    #[command(after_help = "\
A component is name=version, optionally followed by @artifact-uri and #sha256:
  --component driver=550.54.15@https://example.invalid/driver.run#<64 hex digits>

A release file looks like:
  name: r550-u3
  description: driver 550 update 3
  components:
    - {name: driver, version: 550.54.15, artifact-uri: https://..., sha256: ...}
    - {name: vbios, version: 96.00.89.00.01}")]
    Create {
        /// Release name, for example r550-u3 (not with -f).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        name: Option<String>,
        /// A component, name=version[@artifact_uri][#sha256] (repeatable).
        #[arg(
            long = "component",
            short = 'c',
            value_name = "SPEC",
            conflicts_with = "file"
        )]
        components: Vec<String>,
        /// Free text.
        #[arg(long, conflicts_with = "file")]
        description: Option<String>,
        /// Read the release from a YAML file instead.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows a release: components, current milestone, track and promotions.
    Show {
        /// Release name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists releases, newest first, each with its target per milestone.
    List {
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sets or moves the date a release should pass a milestone by (audited: who, from what,
    /// to what, why).
    Plan {
        /// Release name.
        name: String,
        /// A milestone of the track.
        #[arg(long)]
        milestone: String,
        /// The day (UTC) it should be passed by, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        target: String,
        /// Why the date is set or moved.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Sets the customers a release is for, replacing those before (none: clears them).
    Customers {
        /// Release name.
        name: String,
        /// A customer (repeatable).
        #[arg(long = "customer", value_name = "NAME")]
        customers: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate plan ...`
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Checks a plan file without a controller and prints what it would do.
    Validate {
        /// Plan file.
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stores a plan on the controller; the same content again is a no-op.
    Apply {
        /// Plan file.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows a stored plan: the latest version, or NAME@VERSION (a unique prefix will do).
    Show {
        /// NAME or NAME@VERSION.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists the latest version of every plan.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate gate ...`
#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// Checks a gate file without a controller and prints its rules.
    Validate {
        /// Gate file.
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stores the gate of a milestone on the controller.
    Apply {
        /// Gate file.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// For CI pipelines: evaluates the gate like `gate show` and exits 0 only when it passed
    /// (failed: 3, waiting for evidence: 5, could not evaluate: 1).
    Check {
        /// Release name.
        #[arg(long)]
        release: String,
        /// Milestone; the release's current one when left out.
        #[arg(long)]
        milestone: Option<String>,
        /// Output format: text, json, or greenwave (Greenwave's decision JSON).
        #[arg(long = "output", short = 'o', value_enum, default_value = "text")]
        output: DecisionFormat,
    },
    /// Evaluates the gate of a release at a milestone now and shows the decision, rule by rule;
    /// with --at, replays the decision as it stood then from its stored inputs.
    Show {
        /// Release name.
        #[arg(long)]
        release: String,
        /// Milestone; the release's current one when left out.
        #[arg(long)]
        milestone: Option<String>,
        /// Replay the latest decision made at or before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Output format: text, json, or greenwave (Greenwave's decision JSON).
        #[arg(long = "output", short = 'o', value_enum, default_value = "text")]
        output: DecisionFormat,
    },
}

/// `tollgate run ...`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Starts a run of a plan for a release: one job per selected node.
    Start {
        /// Release name.
        #[arg(long)]
        release: String,
        /// Plan name (its latest version) or NAME@VERSION.
        #[arg(long)]
        plan: String,
        /// Milestone; the release's current one when left out.
        #[arg(long)]
        milestone: Option<String>,
        /// Select only the matching nodes ready now; by default busy nodes are selected too
        /// and get their job when they free up.
        #[arg(long)]
        nodes_now: bool,
        /// Keep watching the run until it ends, like `tollgate run watch`.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follows a run live until it ends.
    Watch {
        /// Run id.
        run: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows a run: its jobs and every step result.
    Show {
        /// Run id.
        run: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists runs, newest first.
    List {
        /// Only runs of this release.
        #[arg(long)]
        release: Option<String>,
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Cancels a run: pending jobs are dropped, running ones are stopped.
    Cancel {
        /// Run id.
        run: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Checks a rollout file offline and prints its waves, procedure and health rules.
    Validate {
        /// The rollout file (YAML).
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Starts a rollout of a release that passed its production gate.
    Start {
        /// Release name.
        #[arg(long)]
        release: String,
        /// Labels the fleet's nodes carry besides the file's selector, as KEY=VALUE[,KEY=VALUE].
        #[arg(long, default_value = "")]
        fleet: String,
        /// The rollout file (YAML).
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows a rollout: its phase, its waves with each node's progress, and why it halted.
    Show {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists rollouts, newest first, one line each (`rollout show` has every node).
    List {
        /// Only rollouts that have not ended.
        #[arg(long)]
        active: bool,
        /// Only the rollouts of this release.
        #[arg(long)]
        release: Option<String>,
        /// Only the rollouts whose waves hold this node.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follows a rollout live until it has ended.
    Watch {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Pauses a rollout: no node starts; nodes in procedure finish.
    Pause {
        /// Rollout id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Resumes a paused or halted rollout.
    Resume {
        /// Rollout id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Aborts a rollout; with --rollback every node that went through the procedure runs the
    /// rollback plan, those of waves that passed their health included (a halt rolls back
    /// only its own wave's nodes), and a node whose rollback failed runs it again.
    Abort {
        /// Rollout id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Roll back every node that went through the procedure, in every wave.
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Skips the current wave: its nodes not started keep their release.
    SkipWave {
        /// Rollout id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate promote ...`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Release name.
    #[arg(long)]
    pub release: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// File formats of the customer acceptance report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown.
    Markdown,
    /// JSON.
    Json,
    /// Self-contained HTML.
    Html,
    /// JUnit XML, for CI tools.
    Junit,
    /// PDF, printed from the HTML report by a headless Chromium; the signed HTML it was
    /// printed from is written beside it (FILE.html), which `report verify` checks.
    Pdf,
}

impl ReportFormat {
    /// The name the controller expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Markdown => "markdown",
            Self::Json => "json",
            Self::Html => "html",
            Self::Junit => "junit",
            // The controller renders the HTML; the CLI prints it.
            Self::Pdf => "html",
        }
    }
}

/// `tollgate report ...`
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "\
Here -o/--output is the file to write, not the output format; --json prints the summary as JSON.

Every report is signed with the controller's Ed25519 key. Check a file offline with
  tollgate report verify FILE --public-key HEX
where HEX comes from `tollgate report public-key` (or the controller's report-signing.pub).
After a key rotation, check reports signed by any key the deployment has had with
  tollgate report public-key --all > keys.txt
  tollgate report verify FILE --public-keys-from keys.txt

With --attestation the decision is written instead as an in-toto Statement with the SLSA
Verification Summary Attestation predicate in a DSSE envelope signed with the same key
(RELEASE-MILESTONE.intoto.jsonl); `report verify` checks it too, with the key pinned."
)]
pub struct ReportArgs {
    /// Verify a report file, or print the signing key, instead of rendering.
    #[command(subcommand)]
    pub command: Option<ReportCommand>,
    /// Release name (required to render).
    #[arg(long, required = true)]
    pub release: Option<String>,
    /// Milestone; the release's current one when left out.
    #[arg(long)]
    pub milestone: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value = "html")]
    pub format: ReportFormat,
    /// File to write; RELEASE-MILESTONE.EXT in the current directory when left out.
    #[arg(long = "output", short = 'o', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only the nodes whose label LABEL has VALUE, for example customer=acme: the report and
    /// its decision cover that customer's nodes alone.
    #[arg(long, value_name = "LABEL=VALUE", value_parser = parse_customer)]
    pub customer: Option<String>,
    /// Write the decision as a signed in-toto verification summary attestation (a DSSE
    /// envelope) instead of the report.
    #[arg(long, conflicts_with_all = ["format", "customer"])]
    pub attestation: bool,
    /// Print the path and digest as a JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_customer(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((label, value)) if !label.is_empty() && !value.is_empty() => Ok(text.to_owned()),
        _ => Err(format!("'{text}' is not LABEL=VALUE")),
    }
}

/// `tollgate report verify|public-key`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Checks a report file's or an attestation's signature offline, without a controller:
    /// exit 0 valid, 1 does not verify, 2 unusable input (not a signed report, unreadable
    /// file, bad key, an attestation without a pinned key).
    Verify(VerifyArgs),
    /// Prints the public key the controller signs reports with (hex, then its fingerprint);
    /// with --all, every key the deployment has signed with and when.
    PublicKey {
        /// Every key the deployment has signed reports with, oldest first, each with the
        /// period it signed in (the current one last): save it and verify reports signed
        /// before a key rotation with `report verify FILE --public-keys-from KEYS`.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate report verify ...`
#[derive(Debug, Args)]
#[command(after_help = "\
Without --public-key, --key-file or --public-keys-from the signature is only checked against
the key embedded in the report, which anyone can replace with their own: pin your controller's
key. After a key rotation, reports signed before it verify with the retired key: give it with
--public-key, or every key of the deployment with --public-keys-from (the output of
`tollgate report public-key --all`).")]
pub struct VerifyArgs {
    /// Report file: HTML, Markdown, JSON or JUnit XML as rendered by `tollgate report`, or an
    /// attestation (DSSE envelope) as written by `tollgate report --attestation`.
    pub file: PathBuf,
    /// The controller's public key, hex, as `tollgate report public-key` prints it.
    #[arg(long, value_name = "HEX", conflicts_with_all = ["key_file", "public_keys_from"])]
    pub public_key: Option<String>,
    /// A file whose first line is the controller's public key, hex (for example its
    /// report-signing.pub, or the output of `tollgate report public-key`).
    #[arg(long, value_name = "FILE", conflicts_with = "public_keys_from")]
    pub key_file: Option<PathBuf>,
    /// A file listing every key the deployment has signed with, as `tollgate report
    /// public-key --all` prints it (text or -o json): the report must be signed by one of
    /// them, and `verify` says which and when it signed.
    #[arg(long, value_name = "FILE")]
    pub public_keys_from: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tollgate demo ...`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its database, agent state, logs and reports. It is emptied and
    /// recreated on every run (only if it holds a previous demo or nothing at all).
    #[arg(long, value_name = "DIR", default_value = "tollgate-demo")]
    pub data_dir: PathBuf,
    /// Leave the controller and agents running at the end until Ctrl-C, to try other commands.
    #[arg(long)]
    pub keep_running: bool,
    /// Then qualify the release at `production` and roll it onto a simulated production fleet
    /// of 12 nodes in 3 racks, in waves (1 canary, 25 %, 100 %), one node per rack at once;
    /// then show an XID on a wave-2 node of a second site halt that rollout and roll it back.
    #[arg(long)]
    pub rollout: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_flag_goes_after_the_command_and_report_takes_a_file() {
        let cli = Cli::try_parse_from(["tollgate", "node", "list", "-o", "json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::List { output, .. }) if output.output == crate::output::Format::Json
        ));
        let cli = Cli::try_parse_from([
            "tollgate",
            "report",
            "--release",
            "r1",
            "--format",
            "markdown",
            "-o",
            "r1.md",
        ])
        .expect("parses");
        match cli.command {
            Command::Report(args) => {
                assert_eq!(args.file, Some(PathBuf::from("r1.md")));
                assert_eq!(args.format, ReportFormat::Markdown);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn report_verify_needs_no_release_and_render_needs_one() {
        let cli = Cli::try_parse_from(["tollgate", "report", "verify", "r1.html"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Report(ReportArgs {
                command: Some(ReportCommand::Verify(_)),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["tollgate", "report", "--format", "junit"]).is_err());
        assert!(
            Cli::try_parse_from([
                "tollgate",
                "report",
                "--release",
                "r1",
                "--customer",
                "acme"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "tollgate",
                "report",
                "verify",
                "f",
                "--public-key",
                "ab",
                "--key-file",
                "k"
            ])
            .is_err()
        );
    }

    #[test]
    fn an_attestation_takes_a_file_but_no_format_or_customer() {
        let cli = Cli::try_parse_from([
            "tollgate",
            "report",
            "--release",
            "r1",
            "--attestation",
            "-o",
            "r1.intoto.jsonl",
        ])
        .expect("parses");
        match cli.command {
            Command::Report(args) => {
                assert!(args.attestation);
                assert_eq!(args.file, Some(PathBuf::from("r1.intoto.jsonl")));
            }
            other => panic!("parsed as {other:?}"),
        }
        for conflicting in [["--format", "json"], ["--customer", "customer=acme"]] {
            let mut args = vec!["tollgate", "report", "--release", "r1", "--attestation"];
            args.extend(conflicting);
            assert!(Cli::try_parse_from(args).is_err(), "{conflicting:?}");
        }
    }

    #[test]
    fn release_create_takes_flags_or_a_file_not_both() {
        assert!(Cli::try_parse_from(["tollgate", "release", "create", "-f", "r.yaml"]).is_ok());
        assert!(
            Cli::try_parse_from(["tollgate", "release", "create", "r1", "-c", "driver=1"]).is_ok()
        );
        assert!(
            Cli::try_parse_from(["tollgate", "release", "create", "r1", "-f", "r.yaml"]).is_err()
        );
        assert!(Cli::try_parse_from(["tollgate", "release", "create"]).is_err());
    }
}

/// How `gate show` prints a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DecisionFormat {
    /// Text for people.
    #[default]
    Text,
    /// The controller's answer as JSON.
    Json,
    /// Greenwave's decision JSON (policies_satisfied, summary, requirements).
    Greenwave,
}

/// `tollgate waive`
#[derive(Debug, Args)]
pub struct WaiveArgs {
    /// Release name.
    #[arg(long)]
    pub release: String,
    /// Milestone; the release's current one when left out.
    #[arg(long)]
    pub milestone: Option<String>,
    /// Id of the rule to waive.
    #[arg(long = "rule", value_name = "ID")]
    pub rule: String,
    /// Why the rule may be waived.
    #[arg(long)]
    pub reason: String,
    /// Ticket tracking the waiver, for example HW-1234.
    #[arg(long)]
    pub ticket: String,
    /// The issue the waived failures are tracked in (`tollgate issue list`); `waiver list`
    /// then says when it is closed, so the waiver can be revoked.
    #[arg(long, value_name = "N")]
    pub issue: Option<i64>,
    /// When the waiver expires (RFC 3339 or YYYY-MM-DD, UTC midnight).
    #[arg(
        long,
        value_name = "TIME",
        required_unless_present = "for_",
        conflicts_with = "for_"
    )]
    pub expires: Option<String>,
    /// How long the waiver lasts from now, for example 7d, 12h, 30m.
    #[arg(long = "for", id = "for_", value_name = "DURATION")]
    pub for_: Option<String>,
    /// Only failures on this node are waived (repeatable).
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Only failures on nodes with this sku label are waived (repeatable).
    #[arg(long = "sku", value_name = "SKU")]
    pub skus: Vec<String>,
    /// Only failures in this step are waived (repeatable).
    #[arg(long = "step", value_name = "STEP")]
    pub steps: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tollgate waiver ...`
#[derive(Debug, Subcommand)]
pub enum WaiverCommand {
    /// Lists the waivers of a release, revoked and expired ones included.
    List {
        /// Release name.
        #[arg(long)]
        release: String,
        /// Only waivers at this milestone.
        #[arg(long)]
        milestone: Option<String>,
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revokes a waiver.
    Revoke {
        /// Waiver id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate demote`
#[derive(Debug, Args)]
pub struct DemoteArgs {
    /// Release name.
    #[arg(long)]
    pub release: String,
    /// The earlier milestone to move the release back to.
    #[arg(long = "to", value_name = "MILESTONE")]
    pub to: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tollgate halt`
#[derive(Debug, Args)]
pub struct HaltArgs {
    /// Release name.
    #[arg(long)]
    pub release: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tollgate resume`
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Release name.
    #[arg(long)]
    pub release: String,
    /// Why (optional).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `tollgate issue ...`
#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// Opens an issue from a failure group of a release's latest gate decision; when the
    /// group's signature has an issue already, attaches to it instead.
    Open {
        /// The release whose gate failed.
        #[arg(long)]
        release: String,
        /// The decision's milestone (default: the release's current one).
        #[arg(long)]
        milestone: Option<String>,
        /// The failure group, as `tollgate gate show` names it (`RULE#N`), or its whole
        /// signature (`kind: text`).
        #[arg(long = "from", value_name = "GROUP")]
        from: String,
        /// A title (default: the signature).
        #[arg(long)]
        title: Option<String>,
        /// How bad it is (`low`, `high`, ...).
        #[arg(long)]
        severity: Option<String>,
        /// Who works on it.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists issues, oldest first.
    List {
        /// Only issues in this state (open, fix-in-release, verifying, closed, wont-fix).
        #[arg(long)]
        state: Option<String>,
        /// Only issues that failed in this release or whose fix is in it.
        #[arg(long)]
        release: Option<String>,
        /// Only issues set to matter to this customer.
        #[arg(long)]
        customer: Option<String>,
        /// Only issues that failed on this node.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Writes issues to stdout as a document (docs/issue-format.md): JSON or CSV.
    Export {
        /// The document's format.
        #[arg(long, value_enum, default_value = "json")]
        format: IssueExportFormat,
        /// Only issues in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only issues that failed in this release or whose fix is in it.
        #[arg(long)]
        release: Option<String>,
    },
    /// Reads an export document (`issue export`, JSON or CSV) into this controller in one
    /// transaction: issues whose signature exists take its fields, new ones are opened.
    Import {
        /// The document: CSV when its name ends in .csv, else JSON, unless --format says.
        file: std::path::PathBuf,
        /// The document's format (default: from the file name's extension).
        #[arg(long, value_enum)]
        format: Option<IssueExportFormat>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Shows one issue with its history.
    Show {
        /// The issue's number.
        id: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Changes an issue's title, severity, owner, tickets or customers.
    Set {
        /// The issue's number.
        id: i64,
        /// The new title.
        #[arg(long)]
        title: Option<String>,
        /// The new severity; `""` clears it.
        #[arg(long)]
        severity: Option<String>,
        /// The new owner; `""` clears it.
        #[arg(long)]
        owner: Option<String>,
        /// A ticket reference in another tracker (repeatable); the ones given replace the
        /// issue's tickets.
        #[arg(long = "ticket", value_name = "REF")]
        tickets: Vec<String>,
        /// Removes every ticket reference.
        #[arg(long, conflicts_with = "tickets")]
        clear_tickets: bool,
        /// A customer the issue matters to (repeatable); the ones given replace its customers.
        #[arg(long = "customer", value_name = "CUSTOMER")]
        customers: Vec<String>,
        /// Removes every customer.
        #[arg(long, conflicts_with = "customers")]
        clear_customers: bool,
        /// A ticket reference to add to the issue's (repeatable); one it has already is kept.
        /// Not with --ticket, which replaces them all.
        #[arg(long = "add-ticket", value_name = "REF")]
        add_tickets: Vec<String>,
        /// A ticket reference to remove from the issue's (repeatable); one it lacks is ignored.
        #[arg(long = "remove-ticket", value_name = "REF")]
        remove_tickets: Vec<String>,
        /// A customer to add to the issue's (repeatable); one it has already is kept. Not with
        /// --customer, which replaces them all.
        #[arg(long = "add-customer", value_name = "CUSTOMER")]
        add_customers: Vec<String>,
        /// A customer to remove from the issue's (repeatable); one it lacks is ignored.
        #[arg(long = "remove-customer", value_name = "CUSTOMER")]
        remove_customers: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Says the fix is in a release; that release's gate decisions then verify the issue.
    Fix {
        /// The issue's number.
        id: i64,
        /// The release carrying the fix.
        #[arg(long)]
        release: String,
        /// A note for the history.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Decides an issue will not be fixed; a reason is required.
    WontFix {
        /// The issue's number.
        id: i64,
        /// Why it will not be fixed.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Opens a closed or won't-fix issue again.
    Reopen {
        /// The issue's number.
        id: i64,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// The formats of `tollgate issue export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IssueExportFormat {
    /// One JSON document, `{"format": "tollgate-issues/1", "issues": [...]}`.
    Json,
    /// RFC 4180 CSV with a header line; lists joined with `;`.
    Csv,
}

/// `tollgate audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Lists audit entries, oldest first.
    List {
        /// Only entries about this release.
        #[arg(long)]
        release: Option<String>,
        /// Only entries by this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only entries at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries at or before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[command(flatten)]
        pages: crate::pages::PageArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Checks the whole log's hash chain; exits 1 naming the first broken entry.
    Verify {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `tollgate status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this customer's releases (those whose customers include it), nodes and issues.
    #[arg(long)]
    pub customer: Option<String>,
    /// Report what passed from this long ago (7d, 36h) or this time on (RFC 3339 or
    /// YYYY-MM-DD).
    #[arg(long, default_value = "7d", value_name = "DURATION|TIME")]
    pub since: String,
    /// markdown or html.
    #[arg(long, default_value = "markdown")]
    pub format: String,
    /// Add the minutes: the notes taken since --since and every action item.
    #[arg(long)]
    pub minutes: bool,
}

/// `tollgate note ...`
#[derive(Debug, Subcommand)]
pub enum NoteCommand {
    /// Adds a note about a release; with --action and --due, an action item.
    Add {
        /// The release the note is about.
        #[arg(long)]
        release: String,
        /// What was said or decided.
        text: String,
        /// Who owns the action item (needs --due).
        #[arg(long, value_name = "OWNER")]
        action: Option<String>,
        /// When the action item is due, YYYY-MM-DD (needs --action).
        #[arg(long, value_name = "YYYY-MM-DD")]
        due: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lists notes, oldest first.
    List {
        /// Only notes about this release.
        #[arg(long)]
        release: Option<String>,
        /// Only notes taken this long ago (7d) or at this time (RFC 3339 or YYYY-MM-DD) or later.
        #[arg(long, value_name = "DURATION|TIME")]
        since: Option<String>,
        /// Only action items.
        #[arg(long)]
        actions: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Marks a note's action item done, once.
    Done {
        /// The note's number (`tollgate note list --actions` shows them).
        id: i64,
        /// What was done, kept with it.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}
