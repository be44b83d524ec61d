//! Nodes in the store: registration, reads, heartbeats, and applying lifecycle and health
//! changes decided by `tollgate_domain::node` (`next_state`, `next`) with a compare-and-set on
//! the state or health they were decided from.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, found, micros, rows, states, to_json};
use std::sync::LazyLock;
use tollgate_domain::fleet::{Inventory, Labels, Node, NodeState};
use tollgate_domain::node::HealthChange;
use tollgate_domain::result::Outcome;
use tollgate_domain::{NodeId, Timestamp};

/// What a registration does to the node's row, as decided by the caller from the node as it
/// was loaded (`tollgate_domain::node::next_state` with `Reconnected`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The node was not known: insert it in this state, `good`.
    New(NodeState),
    /// The node was known in state `from` with the token hash `stored_token_hash`: update it
    /// and move it to `to` if it still is in that state with that token hash.
    Known {
        /// The state the decision was made from.
        from: NodeState,
        /// The state decided.
        to: NodeState,
        /// The token hash stored when the decision was made (the one a presented token was
        /// checked against): another registration that replaced it meanwhile wins.
        stored_token_hash: String,
    },
}

/// What a node's registration is decided from, read at once ([`Store::registration_facts`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegistrationFacts {
    /// The sha256 (hex) of its token, when the node is known.
    pub token_hash: Option<String>,
    /// Its state, and whether it has an active job, when the node is known.
    pub known: Option<(NodeState, bool)>,
    /// Its labels of record, when it was enrolled.
    pub labels_of_record: Option<Labels>,
}

/// Nodes per statement of [`Store::registration_facts_of`]. SQLite
/// looks each numbered parameter up by name as it is bound, a cost that grows with the
/// statement's parameters; at 100 nodes it is small.
pub const HEARTBEATS_PER_STATEMENT: usize = 100;

/// A node's state and active job, as judging its agent's heartbeat needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatFacts {
    /// The node.
    pub node: NodeId,
    /// Its lifecycle state.
    pub state: NodeState,
    /// Its assigned or running job.
    pub current_job: Option<tollgate_domain::JobId>,
}

/// What the lease watchdog reads each tick ([`Store::lease_facts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseFacts {
    /// How many nodes' leases are watched: nodes neither unreachable nor retired.
    pub n_watched: usize,
    /// The watched nodes not heard since the moment asked for (or never), by name, each with
    /// its last heartbeat.
    pub quiet: Vec<(NodeId, Option<Timestamp>)>,
}

/// `n` rows of `width` numbered placeholders for a `VALUES` list: `($1, $2), ($3, $4)`.
fn value_rows(n: usize, width: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|row| {
            let cells: Vec<String> = (1..=width)
                .map(|cell| format!("${}", row * width + cell))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    rows.join(", ")
}

/// The most registrations one statement of a batch applies together
/// ([`register_together!`](super::results) in `results.rs`).
pub(super) const REGISTRATIONS_PER_STATEMENT: usize = 100;

/// [`REGISTER_NEW`] for `n` new nodes at once, binding the same nine values per node;
/// answers the names it inserted (a name another registration took meanwhile is not among
/// them).
pub(super) fn register_new_sql(n: usize) -> String {
    format!(
        "INSERT INTO nodes (name, labels, inventory, gpu_source, state, health, token_hash,
             registered_at, reported_labels)
         VALUES {} ON CONFLICT (name) DO NOTHING RETURNING name",
        value_rows(n, 9)
    )
}

/// [`REGISTER_KNOWN`] for `n` known nodes at once, binding per node its name, labels,
/// inventory, GPU source, token hash, the state decided from, the state decided, the
/// reported labels and the token hash decided from; answers the names it updated (one whose
/// state or token changed meanwhile is not among them).
pub(super) fn register_known_sql(n: usize) -> String {
    format!(
        "UPDATE nodes SET labels = v.column2, inventory = v.column3, gpu_source = v.column4,
             token_hash = v.column5, state = v.column7, reported_labels = v.column8
         FROM (VALUES {}) AS v
         WHERE nodes.name = v.column1 AND nodes.state = v.column6
           AND nodes.token_hash = v.column9
         RETURNING nodes.name",
        value_rows(n, 9)
    )
}

/// [`RECORD_HEARTBEAT`] for `n` distinct nodes at once, binding each node's name and time.
pub(super) fn record_heartbeats_sql(n: usize) -> String {
    format!(
        "INSERT INTO node_heartbeats (node, last_seen_at) VALUES {}
         ON CONFLICT (node) DO UPDATE SET last_seen_at = excluded.last_seen_at",
        value_rows(n, 2)
    )
}

/// A registration's statements ([`apply_registration!`] in `mod.rs`): a new node's insert, a
/// known one's compare-and-set on the state decided from, and its last heartbeat.
pub(super) const REGISTER_NEW: &str = "INSERT INTO nodes (name, labels, inventory, gpu_source,
        state, health, token_hash, registered_at, reported_labels)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (name) DO NOTHING";
pub(super) const REGISTER_KNOWN: &str = "UPDATE nodes SET labels = $2, inventory = $3,
        gpu_source = $4, token_hash = $5, state = $7, reported_labels = $8
     WHERE name = $1 AND state = $6 AND token_hash = $9";
pub(super) const RECORD_HEARTBEAT: &str = "INSERT INTO node_heartbeats (node, last_seen_at)
     VALUES ($1, $2) ON CONFLICT (node) DO UPDATE SET last_seen_at = excluded.last_seen_at";

/// A new node's registration whose insert found the name taken.
pub(super) fn new_node_taken(node: &NodeId) -> StoreError {
    StoreError::Conflict {
        what: format!("node {node}"),
        detail: "registered by another connection meanwhile".into(),
    }
}

/// Why a known node's registration missed when the node is still in the state it was decided
/// from: another registration replaced its token.
pub(super) const TOKEN_REPLACED: &str = "its token was replaced by another registration meanwhile";

/// A registration decided from the node as loaded, its columns encoded before it waits for
/// a transaction ([`Store::register_node`], or a batch's: [`super::Write::Registration`]).
#[derive(Clone, Debug)]
pub struct EncodedRegistration {
    pub(super) node: NodeId,
    pub(super) labels: String,
    pub(super) reported: String,
    pub(super) inventory: String,
    pub(super) gpu_source: &'static str,
    pub(super) token_hash: String,
    pub(super) registration: Registration,
}

impl EncodedRegistration {
    /// `node`'s registration with its labels of record (`labels`), those its agent reported,
    /// its inventory and token hash, and what it does to the node's row.
    pub fn new(
        node: &NodeId,
        labels: &Labels,
        reported: &Labels,
        inventory: &Inventory,
        token_hash: &str,
        registration: Registration,
    ) -> Self {
        Self {
            node: node.clone(),
            labels: to_json(labels),
            reported: to_json(reported),
            inventory: to_json(inventory),
            gpu_source: inventory.gpu_source.as_str(),
            token_hash: token_hash.to_owned(),
            registration,
        }
    }

    /// The node registered.
    pub fn node(&self) -> &NodeId {
        &self.node
    }
}

/// `UPDATE` of nodes' `last_seen_at` from one JSON array of `[name, time]` pairs bound at
/// `$1` (the time as SQLite's column holds it, RFC 3339 text, which PostgreSQL casts): one
/// statement, kept prepared, however many nodes a flush recorded. It writes the narrow
/// `node_heartbeats` rows only, never the nodes' own (which carry the inventory).
const TOUCH_NODES: (&str, &str) = (
    "UPDATE node_heartbeats SET last_seen_at = v.at
     FROM (SELECT value ->> 0 AS node, value ->> 1 AS at FROM json_each($1)) AS v
     WHERE node_heartbeats.node = v.node",
    "UPDATE node_heartbeats SET last_seen_at = (v.e ->> 1)::timestamptz
     FROM jsonb_array_elements($1::jsonb) AS v(e)
     WHERE node_heartbeats.node = v.e ->> 0",
);

/// The names, states and active jobs of the nodes named in the JSON array bound at `$1`,
/// answered as one row: a JSON array of `[name, state, active job or null]` arrays (each row
/// of an answer is a hand-off between SQLite's thread and the caller's, and a flush reads
/// every node heard since the one before). Asked for [`FACTS_PER_STATEMENT`] nodes at most
/// ([`super::json_pieces`]). On SQLite the read is told to use the index on (name, state): a
/// `nodes` row holds `state` after the inventory, in overflow pages, and the planner prefers
/// the primary key's index for lookups by name.
static HEARTBEAT_FACTS: LazyLock<(String, String)> = LazyLock::new(|| {
    let current_job = "(SELECT j.id FROM jobs j
                        WHERE j.node = n.name AND j.state IN {active}
                        ORDER BY j.updated_at DESC LIMIT 1)";
    (
        states::sql(&format!(
            "SELECT json_group_array(json_array(n.name, n.state, {current_job})) AS facts
             FROM nodes n INDEXED BY nodes_by_name_state
             WHERE n.name IN (SELECT value FROM json_each($1))"
        )),
        states::sql(&format!(
            "SELECT COALESCE(json_agg(json_build_array(n.name, n.state, {current_job}))::text,
                             '[]') AS facts
             FROM nodes n
             WHERE n.name IN (SELECT jsonb_array_elements_text($1::jsonb))"
        )),
    )
});

/// Nodes whose heartbeat facts one statement reads, at most.
const FACTS_PER_STATEMENT: usize = 500;

/// The rows of `$sql`, a read of nodes built from numbered placeholders (`$1`… bound to the
/// node names of `$names`, in order) and state lists only, each mapped from its fields by
/// `$map`.
macro_rules! fetch_for_names {
    ($store:expr, $sql:expr, $names:expr, |$fields:ident| $map:expr) => {
        with_pool!($store, |pool| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe($sql.clone()));
            for node in $names {
                query = query.bind(node.as_str());
            }
            query
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let $fields = rows::Fields::new(row, "nodes", &["name"]);
                    $map
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    };
}

/// Moves the node from state `$from` to `$to` in the transaction `$tx`, or returns the
/// `Conflict` (or `NotFound`) from the method when it is no longer in `$from`.
macro_rules! move_state {
    ($tx:expr, $node:expr, $from:expr, $to:expr) => {{
        let n_rows = sqlx::query("UPDATE nodes SET state = $3 WHERE name = $1 AND state = $2")
            .bind($node.as_str())
            .bind($from.as_str())
            .bind($to.as_str())
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if n_rows == 0 {
            return Err(node_state_conflict!($tx, $node, $from));
        }
    }};
}

impl Store {
    /// Applies a registration decided from the node as loaded, in one transaction: labels (of
    /// record, and as the agent reported them), inventory, token hash and last-seen time, and
    /// the state decided. A new node is inserted (`Conflict` when another registration
    /// inserted it meanwhile); a known one is updated only if it is still in the state the
    /// decision was made from (`Conflict` otherwise).
    pub async fn register_node(
        &self,
        registration: &EncodedRegistration,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut outcomes = self
            .write_batch(&[super::Write::Registration(registration, now)])
            .await?;
        match outcomes.pop() {
            Some(outcome) => outcome.map(|_| ()),
            None => Err(StoreError::Corrupt {
                what: format!("node {}", registration.node),
                detail: "a batch of one gave no outcome".to_owned(),
            }),
        }
    }

    /// What registering `node` is decided from, in one read: its token hash, state and
    /// whether it has an active job when it is known, its labels of record when it was
    /// enrolled. Reads no inventory.
    pub async fn registration_facts(&self, node: &NodeId) -> Result<RegistrationFacts, StoreError> {
        let facts = self
            .registration_facts_of(std::slice::from_ref(node))
            .await?;
        Ok(facts
            .into_iter()
            .next()
            .map(|(_, facts)| facts)
            .unwrap_or_default())
    }

    /// [`Store::registration_facts`] of each of `names`, in a statement per
    /// [`HEARTBEATS_PER_STATEMENT`] names: every name is answered, an unknown one with no
    /// facts (a node may be enrolled before it ever registers).
    pub async fn registration_facts_of(
        &self,
        names: &[NodeId],
    ) -> Result<Vec<(NodeId, RegistrationFacts)>, StoreError> {
        let mut facts = Vec::with_capacity(names.len());
        for chunk in names.chunks(HEARTBEATS_PER_STATEMENT) {
            let asked: Vec<String> = (1..=chunk.len())
                .map(|idx| format!("(CAST(${idx} AS TEXT))"))
                .collect();
            let sql = states::sql(&format!(
                "WITH k(name) AS (VALUES {})
                 SELECT k.name, n.token_hash, n.state, e.labels AS labels_of_record,
                        (SELECT COUNT(*) FROM jobs j
                         WHERE j.node = k.name AND j.state IN {{active}}) AS n_active
                 FROM k
                 LEFT JOIN nodes n ON n.name = k.name
                 LEFT JOIN node_enrollments e ON e.node_name = k.name",
                asked.join(", ")
            ));
            let rows = fetch_for_names!(self, sql, chunk, |fields| {
                let token_hash = fields.opt_text("token_hash")?;
                let known = match token_hash {
                    None => None,
                    Some(_) => Some((
                        fields.parse("state")?,
                        fields.int_as::<u64>("n_active")? > 0,
                    )),
                };
                let labels_of_record = match fields.opt_text("labels_of_record")? {
                    None => None,
                    Some(_) => Some(fields.json::<Labels>("labels_of_record")?),
                };
                let facts = RegistrationFacts {
                    token_hash,
                    known,
                    labels_of_record,
                };
                Ok((NodeId::from(fields.text("name")?.as_str()), facts))
            })?;
            facts.extend(rows);
        }
        Ok(facts)
    }

    /// The sha256 (hex) of the node's token, if the node exists.
    pub async fn node_token_hash(&self, node: &NodeId) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT token_hash FROM nodes WHERE name = $1";
        let row = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::Fields::new(&row, "nodes", &["name"]).text("token_hash"))
                .transpose()?
        });
        Ok(row)
    }

    /// Every node's token hash, by node name, in one statement (no inventory read).
    pub async fn node_token_hashes(&self) -> Result<Vec<(NodeId, String)>, StoreError> {
        const SQL: &str = "SELECT name, token_hash FROM nodes ORDER BY name";
        let hashes = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let fields = rows::Fields::new(row, "nodes", &["name"]);
                    Ok((
                        NodeId::new(fields.text("name")?),
                        fields.text("token_hash")?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        Ok(hashes)
    }

    /// One node.
    pub async fn get_node(&self, node: &NodeId) -> Result<Option<Node>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| states::sql(node_query!(" WHERE n.name = $1")));
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(node.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::node(&row))
                .transpose()
        })
    }

    /// Every node, by name. `current_job` is its assigned or running job.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| states::sql(node_query!(" ORDER BY n.name")));
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::node)
                .collect()
        })
    }

    /// The nodes of `names` that exist, by name, in one statement.
    pub async fn nodes_named(&self, names: &[NodeId]) -> Result<Vec<Node>, StoreError> {
        static SQL: LazyLock<(String, String)> = LazyLock::new(|| {
            let (sqlite, postgres) =
                in_json_list!(node_query!(" WHERE n.name"), "$1", " ORDER BY n.name");
            (states::sql(sqlite), states::sql(postgres))
        });
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let names = super::json_list(names.iter().map(NodeId::as_str));
        with_pool_sql!(self, *SQL, |pool, sql| {
            sqlx::query(sql)
                .bind(names.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::node)
                .collect()
        })
    }

    /// The labels of each of `names`, in one read; nodes that are gone are left out.
    pub async fn node_labels_of(
        &self,
        names: &[NodeId],
    ) -> Result<std::collections::HashMap<NodeId, Labels>, StoreError> {
        const SQL: (&str, &str) =
            in_json_list!("SELECT name, labels FROM nodes WHERE name", "$1", "");
        if names.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let names = super::json_list(names.iter().map(NodeId::as_str));
        with_pool_sql!(self, SQL, |pool, sql| {
            sqlx::query(sql)
                .bind(&names)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = rows::Fields::new(row, "nodes", &["name"]);
                    Ok((
                        NodeId::from(f.text("name")?.as_str()),
                        f.json::<Labels>("labels")?,
                    ))
                })
                .collect()
        })
    }

    /// Up to `limit` nodes by name, starting after the node named `after`.
    pub async fn list_nodes_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            states::sql(node_query!(
                " WHERE ($1 IS NULL OR n.name > $1) ORDER BY n.name LIMIT $2"
            ))
        });
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(after)
                .bind(super::page_limit(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::node)
                .collect()
        })
    }

    /// Records a heartbeat.
    pub async fn touch_node(&self, node: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE node_heartbeats SET last_seen_at = $2 WHERE node = $1";
        writing!(self, |pool| {
            let n_rows = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(micros(now))
                .execute(pool)
                .await?
                .rows_affected();
            found(n_rows, || format!("node {node}"))
        })
    }

    /// Records the heartbeats a flush gathered: each node's `last_seen_at`, all in one
    /// statement ([`TOUCH_NODES`]). A node that is gone is skipped.
    pub async fn touch_nodes(&self, seen: &[(NodeId, Timestamp)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&str, String)> = seen
            .iter()
            .map(|(node, at)| {
                let at = micros(*at).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
                (node.as_str(), at)
            })
            .collect();
        let pairs = serde_json::to_string(&pairs).expect("names and times serialize");
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(self.pool.sql(TOUCH_NODES))
                .bind(&pairs)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// What the lease watchdog reads every tick: how many nodes' leases it watches (nodes
    /// neither unreachable nor retired), and those of them not heard since `quiet_since` (or
    /// never), with their last heartbeat. Nodes heard since are neither silent nor expired
    /// (`LeaseGrace::quiet_since`), so a tick gets a handful of rows back: it scans the narrow
    /// heartbeat rows and counts index entries, and on SQLite reads no node's own row.
    pub async fn lease_facts(&self, quiet_since: Timestamp) -> Result<LeaseFacts, StoreError> {
        const WATCHED: &str = "SELECT count(*) FROM nodes WHERE state NOT IN ($1, $2)";
        // SQLite: the narrow heartbeat rows are scanned, and the state of the quiet ones
        // read from the index on (name, state) (`nodes_by_state`).
        const QUIET_SQLITE: &str = "SELECT h.node, h.last_seen_at FROM node_heartbeats h
             WHERE (h.last_seen_at IS NULL OR h.last_seen_at < $1)
               AND (SELECT n.state FROM nodes n INDEXED BY nodes_by_name_state
                    WHERE n.name = h.node) NOT IN ($2, $3)
             ORDER BY h.node";
        const QUIET_POSTGRES: &str = "SELECT h.node, h.last_seen_at
             FROM node_heartbeats h JOIN nodes n ON n.name = h.node
             WHERE (h.last_seen_at IS NULL OR h.last_seen_at < $1) AND n.state NOT IN ($2, $3)
             ORDER BY h.node";
        let quiet_sql = match self.pool {
            Pool::Sqlite(_) => QUIET_SQLITE,
            Pool::Postgres(_) => QUIET_POSTGRES,
        };
        let (unreachable, retired) = (NodeState::Unreachable.as_str(), NodeState::Retired.as_str());
        with_pool!(self, |pool| {
            let n_watched: i64 = sqlx::query_scalar(WATCHED)
                .bind(unreachable)
                .bind(retired)
                .fetch_one(pool)
                .await?;
            let quiet = sqlx::query(quiet_sql)
                .bind(quiet_since)
                .bind(unreachable)
                .bind(retired)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = rows::Fields::new(row, "node_heartbeats", &["node"]);
                    Ok((
                        NodeId::from(f.text("node")?.as_str()),
                        f.opt_time("last_seen_at")?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(LeaseFacts {
                n_watched: usize::try_from(n_watched).unwrap_or_default(),
                quiet,
            })
        })
    }

    /// What judging heartbeats needs of each of `names`: its state and active job, without
    /// the inventory and labels a full read parses. Nodes that are gone are left out.
    pub async fn heartbeat_facts(
        &self,
        names: &[NodeId],
    ) -> Result<Vec<HeartbeatFacts>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pieces: Vec<String> = Vec::new();
        for names in names.chunks(FACTS_PER_STATEMENT) {
            let names = super::json_list(names.iter().map(NodeId::as_str));
            pieces.push(with_pool_sql!(self, *HEARTBEAT_FACTS, |pool, sql| {
                let row = sqlx::query(sql).bind(&names).fetch_one(pool).await?;
                rows::Fields::new(&row, "nodes", &[]).text("facts")?
            }));
        }
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "heartbeat facts of nodes".to_owned(),
            detail,
        };
        let facts: Vec<(String, String, Option<String>)> =
            super::json_pieces(pieces).map_err(|err| corrupt(err.to_string()))?;
        facts
            .into_iter()
            .map(|(name, state, current_job)| {
                Ok(HeartbeatFacts {
                    state: state
                        .parse()
                        .map_err(|err| corrupt(format!("node {name}: state: {err}")))?,
                    node: NodeId::from(name.as_str()),
                    current_job: current_job.map(|id| tollgate_domain::JobId::from(id.as_str())),
                })
            })
            .collect()
    }

    /// Applies an operator's change of a node's state (cordon, uncordon, drain), decided by
    /// `tollgate_domain::node::next_state` from `from`, with its audit entry `note` in the same
    /// transaction, and the drain's deadline (`None` for none; only a `draining` node's is
    /// read). `Conflict` when the node is no longer in `from`, so two operators never both
    /// apply changes decided from the same state.
    pub async fn change_node_state(
        &self,
        node: &NodeId,
        from: NodeState,
        to: NodeState,
        drain_deadline: Option<Timestamp>,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const DEADLINE: &str = "UPDATE nodes SET drain_deadline = $2 WHERE name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            move_state!(tx, node, from, to);
            sqlx::query(DEADLINE)
                .bind(node.as_str())
                .bind(drain_deadline.map(micros))
                .execute(&mut *tx)
                .await?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The `draining` nodes whose drain has a deadline, with it.
    pub async fn drain_deadlines(&self) -> Result<Vec<(NodeId, Timestamp)>, StoreError> {
        const SQL: &str = "SELECT name, drain_deadline FROM nodes
             WHERE state = $1 AND drain_deadline IS NOT NULL ORDER BY name";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(NodeState::Draining.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = rows::Fields::new(row, "nodes", &["name"]);
                    Ok((NodeId::new(f.text("name")?), f.time("drain_deadline")?))
                })
                .collect()
        })
    }

    /// Applies a node health change decided by `tollgate_domain::node::next`, with its audit
    /// entry `note` in the same transaction. The change applies only if the node still has
    /// the health it was decided from (`Conflict` otherwise), so two writers never both apply
    /// changes decided from the same health.
    pub async fn change_node_health(
        &self,
        node: &NodeId,
        change: &HealthChange,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "UPDATE nodes SET health = $3, health_reason = $4 WHERE name = $1 AND health = $2";
        const CURRENT: &str = "SELECT name, health FROM nodes WHERE name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(change.from.as_str())
                .bind(change.to.as_str())
                .bind(&change.reason)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                let current = sqlx::query(CURRENT)
                    .bind(node.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| rows::Fields::new(&row, "nodes", &["name"]).text("health"))
                    .transpose()?;
                return Err(match current {
                    None => StoreError::NotFound {
                        what: format!("node {node}"),
                    },
                    Some(current) => StoreError::Conflict {
                        what: format!("node {node}"),
                        detail: format!("expected health {}, found {current}", change.from),
                    },
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The outcomes of the node's latest `limit` step results that were not skipped, newest
    /// first (by arrival), across jobs and runs.
    pub async fn recent_outcomes(
        &self,
        node: &NodeId,
        limit: usize,
    ) -> Result<Vec<Outcome>, StoreError> {
        const SQL: &str = "SELECT r.job_id, r.outcome FROM step_results r
             JOIN jobs j ON j.id = r.job_id
             WHERE j.node = $1 AND r.outcome <> $3
             ORDER BY r.seq DESC LIMIT $2";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .bind(limit)
                .bind(Outcome::Skipped.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| rows::Fields::new(row, "step_results", &["job_id"]).parse("outcome"))
                .collect()
        })
    }
}
