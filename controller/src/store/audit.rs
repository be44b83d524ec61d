//! Accountability in the store: the hash-chained audit log, and the inputs stored with each
//! decision so that it can be replayed.
//!
//! **Invariant:** every change recorded in the audit log is written in the same transaction
//! as its audit entry (see `append_audit!` in `mod.rs`): either both are committed or neither.

use super::connect::Begin;
use super::rows::{Fields, StoreRow};
use super::{Pool, Store, StoreError, classify, micros, text, to_json};
use std::collections::HashMap;
use tollgate_domain::audit::{self as chain, AuditEntry, Broken, NewAuditEntry};
use tollgate_domain::gate::{Decision, Evidence, GatePolicy, JobEvidence, RunEvidence, Waiver};
use tollgate_domain::result::StepResult;
use tollgate_domain::{NodeId, ReleaseId, Timestamp};

/// Who made a change, when, and what it was: the audit entry written with the change.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditNote {
    /// When.
    pub at: Timestamp,
    /// Who: an API token's name, or "anonymous".
    pub actor: String,
    /// What was done, for example `waiver.create`.
    pub action: String,
    /// What it was done to, for example `release/r550`.
    pub subject: String,
    /// The release concerned, when one is, so the log can be filtered by release.
    pub release: Option<ReleaseId>,
    /// Details as JSON.
    pub details: serde_json::Value,
}

impl AuditNote {
    /// A note without release or details.
    pub fn new(
        at: Timestamp,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            at,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            release: None,
            details: serde_json::Value::Null,
        }
    }

    /// The same note about `release`.
    pub fn release(mut self, release: &ReleaseId) -> Self {
        self.release = Some(release.clone());
        self
    }

    /// The same note with `details`.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Which audit entries to list; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    /// Only entries about this release.
    pub release: Option<ReleaseId>,
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries at or before this time.
    pub until: Option<Timestamp>,
}

/// What a decision was made from, stored with it so it can be evaluated again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplayInputs {
    /// The policy.
    pub policy: GatePolicy,
    /// The evidence, with its baseline.
    pub evidence: Evidence,
    /// Every waiver of the release at the milestone known then (in force or not).
    pub waivers: Vec<Waiver>,
    /// The inputs were stored whole, before decisions referenced their results: their digest
    /// was computed under the first digest scheme ([`tollgate_domain::gate::digest_inputs_v1`]).
    #[serde(skip)]
    pub first_scheme: bool,
}

/// Replay inputs as stored: the policy and waivers in full, the evidence by reference to the
/// results in `step_results` (append-only), so storing a decision over 100,000 results writes
/// their keys, not their content. Replaying loads the referenced results again; a result that
/// was edited or deleted since gives another digest, and the replay says it does not match.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredInputs {
    /// Always [`STORED_INPUTS_FORMAT`]; inputs stored before it are a whole [`ReplayInputs`].
    format: u32,
    policy: GatePolicy,
    waivers: Vec<Waiver>,
    evidence: EvidenceRef,
}

/// A decision's replay inputs as stored ([`StoredInputs`] as JSON, and its sha256 key), taken
/// from the evidence while it is at hand ([`Store::insert_decision_encoded`]).
#[derive(Debug, Clone)]
pub struct DecisionInputs {
    key: String,
    inputs: String,
}

impl DecisionInputs {
    /// The inputs of a decision over `evidence` under `policy` and `waivers`: the evidence by
    /// reference to its results.
    pub fn of(policy: &GatePolicy, evidence: &Evidence, waivers: &[Waiver]) -> Self {
        let stored = StoredInputs {
            format: STORED_INPUTS_FORMAT,
            policy: policy.clone(),
            waivers: waivers.to_vec(),
            evidence: EvidenceRef::of(evidence),
        };
        let inputs = text(&to_json(&stored)).into_owned();
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(inputs.as_bytes()));
        Self { key, inputs }
    }
}

/// The format number of [`StoredInputs`].
const STORED_INPUTS_FORMAT: u32 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct EvidenceRef {
    release: tollgate_domain::release::Release,
    milestone: String,
    runs: Vec<RunRef>,
    baseline: Option<Box<EvidenceRef>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RunRef {
    run_id: tollgate_domain::RunId,
    plan_name: String,
    plan_version: tollgate_domain::PlanVersion,
    plan_steps: Vec<String>,
    created_at: Timestamp,
    jobs: Vec<JobRef>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JobRef {
    job_id: tollgate_domain::JobId,
    node: NodeId,
    labels: tollgate_domain::fleet::Labels,
    gpu_source: tollgate_domain::fleet::GpuSourceKind,
    state: tollgate_domain::job::JobState,
    /// Each result's key: step index, attempt, lease epoch.
    results: Vec<(u32, u32, u64)>,
}

impl EvidenceRef {
    fn of(evidence: &Evidence) -> Self {
        Self {
            release: evidence.release.clone(),
            milestone: evidence.milestone.clone(),
            runs: evidence
                .runs
                .iter()
                .map(|run| RunRef {
                    run_id: run.run_id.clone(),
                    plan_name: run.plan_name.clone(),
                    plan_version: run.plan_version.clone(),
                    plan_steps: run.plan_steps.clone(),
                    created_at: run.created_at,
                    jobs: run
                        .jobs
                        .iter()
                        .map(|job| JobRef {
                            job_id: job.job_id.clone(),
                            node: job.node.clone(),
                            labels: job.labels.clone(),
                            gpu_source: job.gpu_source,
                            state: job.state,
                            results: job
                                .results
                                .iter()
                                .map(|r| (r.step_index, r.attempt, r.lease_epoch))
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            baseline: evidence.baseline.as_deref().map(|b| Box::new(Self::of(b))),
        }
    }
}

/// Locks the head row (PostgreSQL); a no-op write under SQLite's write lock.
pub(super) const LOCK_HEAD: &str = "UPDATE audit_head SET seq = seq WHERE id = 1";
/// The head after locking it.
pub(super) const READ_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
/// Appends one entry.
pub(super) const INSERT_ENTRY: &str =
    "INSERT INTO audit (seq, at, actor, action, subject, release, details, prev_hash, hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Moves the head to the entry just appended.
pub(super) const MOVE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

/// The entry `note` becomes after the head read from `head_row`.
pub(super) fn chained(
    head_row: &impl StoreRow,
    note: &AuditNote,
) -> Result<AuditEntry, StoreError> {
    let f = Fields::new(head_row, "audit_head", &["seq"]);
    let seq: u64 = f.int_as("seq")?;
    let hash = f.text("hash")?;
    let prev = (seq > 0).then_some((seq, hash.as_str()));
    Ok(chain::chain(
        prev,
        NewAuditEntry {
            at: micros(note.at),
            actor: text(&note.actor).into_owned(),
            action: note.action.clone(),
            subject: text(&note.subject).into_owned(),
            details: text(&to_json(&note.details)).into_owned(),
        },
    ))
}

/// A sequence number as the signed column stores it.
pub(super) fn seq_to_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt {
        what: "audit sequence number".into(),
        detail: format!("{seq} does not fit a signed 64-bit column"),
    })
}

/// An `audit` row.
fn audit_entry(row: &impl StoreRow) -> Result<AuditEntry, StoreError> {
    let f = Fields::new(row, "audit", &["seq"]);
    Ok(AuditEntry {
        seq: f.int_as("seq")?,
        at: f.time("at")?,
        actor: f.text("actor")?,
        action: f.text("action")?,
        subject: f.text("subject")?,
        details: f.text("details")?,
        prev_hash: f.text("prev_hash")?,
        hash: f.text("hash")?,
    })
}

impl Store {
    /// Appends an audit entry on its own, for a change that has no row of its own.
    pub async fn append_audit(&self, note: &AuditNote) -> Result<AuditEntry, StoreError> {
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let entry = append_audit!(tx, note);
            tx.commit().await?;
            Ok(entry)
        })
    }

    /// Audit entries matching `filter`, oldest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.list_audit_page(filter, None, usize::MAX).await
    }

    /// Up to `limit` audit entries matching `filter`, oldest first, after position `after`.
    pub async fn list_audit_page(
        &self,
        filter: &AuditFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        const SQL: &str =
            "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit
             WHERE ($1 IS NULL OR release = $1) AND ($2 IS NULL OR actor = $2)
               AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at <= $4)
               AND ($5 IS NULL OR seq > $5)
             ORDER BY seq LIMIT $6";
        let after = after.map(|seq| i64::try_from(seq).unwrap_or(i64::MAX));
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(filter.release.as_ref().map(|release| release.as_str()))
                .bind(filter.actor.as_deref())
                .bind(filter.since.map(micros))
                .bind(filter.until.map(micros))
                .bind(after)
                .bind(super::page_limit(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(audit_entry)
                .collect()
        })
    }

    /// The hash of the newest audit entry; `None` while the log is empty.
    pub async fn audit_head(&self) -> Result<Option<String>, StoreError> {
        with_pool!(self, |pool| {
            let head = sqlx::query(READ_HEAD).fetch_one(pool).await?;
            let f = Fields::new(&head, "audit_head", &["seq"]);
            let seq: u64 = f.int_as("seq")?;
            Ok((seq > 0).then(|| f.text("hash")).transpose()?)
        })
    }

    /// Checks the whole audit log against its hash chain and recorded head: the head hash
    /// when intact, else the first broken entry.
    pub async fn verify_audit(&self) -> Result<Result<String, Broken>, StoreError> {
        const ALL: &str = "SELECT seq, at, actor, action, subject, details, prev_hash, hash
             FROM audit ORDER BY seq";
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let head = sqlx::query(READ_HEAD).fetch_one(&mut *tx).await?;
            let f = Fields::new(&head, "audit_head", &["seq"]);
            let head_seq: u64 = f.int_as("seq")?;
            let head_hash = f.text("hash")?;
            let entries: Vec<AuditEntry> = sqlx::query(ALL)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(audit_entry)
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            let head = (head_seq > 0).then_some((head_seq, head_hash.as_str()));
            Ok(chain::verify(&entries, head))
        })
    }

    /// Stores a decision with the inputs it was made from (append-only). Inputs are stored
    /// once per distinct content, keyed by their sha256.
    pub async fn insert_decision_with_inputs(
        &self,
        decision: &Decision,
        inputs: &ReplayInputs,
    ) -> Result<(), StoreError> {
        self.insert_decision_with(decision, &inputs.policy, &inputs.evidence, &inputs.waivers)
            .await
    }

    /// [`Store::insert_decision_with_inputs`] with the inputs borrowed.
    pub async fn insert_decision_with(
        &self,
        decision: &Decision,
        policy: &GatePolicy,
        evidence: &Evidence,
        waivers: &[Waiver],
    ) -> Result<(), StoreError> {
        self.insert_decision_encoded(decision, &DecisionInputs::of(policy, evidence, waivers))
            .await
    }

    /// [`Store::insert_decision_with`] with the inputs encoded beforehand, so that the caller
    /// need not hold the evidence while the decision is written.
    pub async fn insert_decision_encoded(
        &self,
        decision: &Decision,
        inputs: &DecisionInputs,
    ) -> Result<(), StoreError> {
        const INPUTS: &str = "INSERT INTO decision_inputs (hash, inputs) VALUES ($1, $2)
             ON CONFLICT (hash) DO NOTHING";
        const SQL: &str =
            "INSERT INTO decisions (release, milestone, verdict, digest, policy_version,
                                    decision, evaluated_at, inputs_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let document = to_json(decision);
        let DecisionInputs { key, inputs } = inputs;
        let what = format!("release {}", decision.release);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(INPUTS)
                .bind(key)
                .bind(inputs)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SQL)
                .bind(&decision.release)
                .bind(&decision.milestone)
                .bind(decision.verdict.as_str())
                .bind(&decision.digest)
                .bind(&decision.policy_version)
                .bind(&document)
                .bind(micros(decision.evaluated_at))
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &what, &what))?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The latest stored decision of a release at a milestone evaluated at or before `at`,
    /// with its inputs when they were stored (the evidence loaded again from the results it
    /// references).
    pub async fn decision_at(
        &self,
        release: &ReleaseId,
        milestone: &str,
        at: Timestamp,
    ) -> Result<Option<(Decision, Option<ReplayInputs>)>, StoreError> {
        const SQL: &str = "SELECT d.release, d.milestone, d.digest, d.decision, i.inputs
             FROM decisions d LEFT JOIN decision_inputs i ON i.hash = d.inputs_key
             WHERE d.release = $1 AND d.milestone = $2 AND d.evaluated_at <= $3
             ORDER BY d.evaluated_at DESC, d.seq DESC
             LIMIT 1";
        /// The inputs as found: whole (stored before references) or by reference.
        enum Found {
            Whole(ReplayInputs),
            ByReference(StoredInputs),
        }
        let found = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .bind(milestone)
                .bind(micros(at))
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    let f = Fields::new(&row, "decisions", &["release", "milestone", "digest"]);
                    let decision: Decision = f.json("decision")?;
                    let inputs = match f.opt_text("inputs")? {
                        None => None,
                        Some(json) if json.starts_with("{\"format\":") => {
                            Some(Found::ByReference(f.json::<StoredInputs>("inputs")?))
                        }
                        Some(_) => Some(Found::Whole(f.json::<ReplayInputs>("inputs")?)),
                    };
                    Ok::<_, StoreError>((decision, inputs))
                })
                .transpose()?
        });
        let Some((decision, inputs)) = found else {
            return Ok(None);
        };
        let inputs = match inputs {
            None => None,
            Some(Found::Whole(inputs)) => Some(ReplayInputs {
                first_scheme: true,
                ..inputs
            }),
            Some(Found::ByReference(stored)) => {
                let mut evidence = self.resolve_evidence(&stored.evidence).await?;
                if let Some(baseline) = &stored.evidence.baseline {
                    evidence.baseline = Some(Box::new(self.resolve_evidence(baseline).await?));
                }
                Some(ReplayInputs {
                    policy: stored.policy,
                    evidence,
                    waivers: stored.waivers,
                    first_scheme: false,
                })
            }
        };
        Ok(Some((decision, inputs)))
    }

    /// Evidence loaded again from the results `reference` names, in its order. A referenced
    /// result that is no longer stored is left out (and the replay's digest then differs).
    async fn resolve_evidence(&self, reference: &EvidenceRef) -> Result<Evidence, StoreError> {
        const RESULTS: &str = result_query!(
            " WHERE job_id IN (SELECT id FROM jobs WHERE run_id = $1)
              ORDER BY job_id, step_index, attempt, lease_epoch"
        );
        let mut runs = Vec::with_capacity(reference.runs.len());
        for run in &reference.runs {
            // Decoded a chunk at a time: a run's raw rows (series included, a replay
            // digests whole results) are never held at once.
            let mut stored: HashMap<(String, u32, u32, u64), StepResult> = HashMap::new();
            with_pool!(self, |pool| {
                let rows = sqlx::query(RESULTS).bind(run.run_id.as_str()).fetch(pool);
                super::decode_in_chunks(rows, super::rows::step_result, |result| {
                    let key = (
                        result.job_id.to_string(),
                        result.step_index,
                        result.attempt,
                        result.lease_epoch,
                    );
                    stored.insert(key, result);
                })
                .await?;
            });
            let jobs = run
                .jobs
                .iter()
                .map(|job| JobEvidence {
                    job_id: job.job_id.clone(),
                    node: job.node.clone(),
                    labels: job.labels.clone(),
                    gpu_source: job.gpu_source,
                    state: job.state,
                    results: job
                        .results
                        .iter()
                        .filter_map(|(step, attempt, epoch)| {
                            stored.remove(&(job.job_id.to_string(), *step, *attempt, *epoch))
                        })
                        .collect(),
                    // Digested again from what was loaded, so an edited result shows.
                    result_digests: Vec::new(),
                })
                .collect();
            runs.push(RunEvidence {
                run_id: run.run_id.clone(),
                plan_name: run.plan_name.clone(),
                plan_version: run.plan_version.clone(),
                plan_steps: run.plan_steps.clone(),
                created_at: run.created_at,
                jobs,
            });
        }
        Ok(Evidence {
            release: reference.release.clone(),
            milestone: reference.milestone.clone(),
            runs,
            baseline: None,
        })
    }

    /// The release other than `except` most recently promoted past `milestone` and not
    /// demoted back to it since: the baseline that `baseline` rules compare with.
    pub async fn last_promoted_past(
        &self,
        milestone: &str,
        except: &ReleaseId,
    ) -> Result<Option<ReleaseId>, StoreError> {
        // A release demoted back to the milestone is no longer past it.
        const SQL: &str = "SELECT p.release FROM promotions p
             JOIN releases r ON r.name = p.release
             WHERE p.from_milestone = $1 AND p.release <> $2 AND r.milestone <> $1
             ORDER BY p.promoted_at DESC, p.seq DESC
             LIMIT 1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(milestone)
                .bind(except.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    Fields::new(&row, "promotions", &["release"])
                        .text("release")
                        .map(ReleaseId)
                })
                .transpose()
        })
    }
}
