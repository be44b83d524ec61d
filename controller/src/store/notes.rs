//! Meeting minutes in the store: a note (optionally an action item) is added with its audit
//! entry in one transaction; notes are read back by release and time. Also the passed gate
//! decisions a status report lists.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, micros, rows, text};
use tollgate_domain::gate::Verdict;
use tollgate_domain::note::{Action, NewNote, Note};
use tollgate_domain::{ReleaseId, Timestamp};

/// Which notes a list shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoteFilter {
    /// Only notes about these releases; `None` for every release.
    pub releases: Option<Vec<ReleaseId>>,
    /// Only notes added at or after this time.
    pub since: Option<Timestamp>,
    /// Only notes with an action item.
    pub actions_only: bool,
}

/// The most notes one list answers (the newest of them).
pub const NOTES_MAX: usize = 1000;

/// A gate decision that passed: the first time each digest was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassedDecision {
    /// The milestone.
    pub milestone: String,
    /// The decision's digest.
    pub digest: String,
    /// When it was first stored.
    pub at: Timestamp,
}

/// A note from its row.
fn note(row: &impl rows::StoreRow) -> Result<Note, StoreError> {
    let f = rows::Fields::new(row, "notes", &["id"]);
    let owner = f.opt_text("action_owner")?;
    let due = match f.opt_text("due")? {
        None => None,
        Some(_) => Some(f.date("due")?),
    };
    Ok(Note {
        id: f.int_as("id")?,
        release: ReleaseId::from(f.text("release")?),
        text: f.text("text")?,
        action: owner.zip(due).map(|(owner, due)| Action { owner, due }),
        author: f.text("author")?,
        at: f.time("at")?,
    })
}

impl Store {
    /// Adds `note` with its audit entry `audit`, in one transaction; returns it as stored.
    pub async fn add_note(&self, note: &NewNote, audit: &AuditNote) -> Result<Note, StoreError> {
        const INSERT: &str = "INSERT INTO notes (release, text, action_owner, due, author, at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(INSERT)
                .bind(note.release.as_str())
                .bind(text(&note.text))
                .bind(note.action.as_ref().map(|action| text(&action.owner)))
                .bind(note.action.as_ref().map(|action| action.due.to_string()))
                .bind(&note.author)
                .bind(micros(note.at))
                .fetch_one(&mut *tx)
                .await?;
            let id: i64 = rows::Fields::new(&row, "notes", &["id"]).int_as("id")?;
            let mut audit = audit.clone();
            audit.subject = format!("note/{id}");
            append_audit!(tx, &audit);
            tx.commit().await?;
            Ok(Note {
                id,
                release: note.release.clone(),
                text: note.text.clone(),
                action: note.action.clone(),
                author: note.author.clone(),
                at: micros(note.at),
            })
        })
    }

    /// The notes `filter` lets through, oldest first: the newest [`NOTES_MAX`] of them.
    pub async fn notes(&self, filter: &NoteFilter) -> Result<Vec<Note>, StoreError> {
        const SQL: &str = "SELECT id, release, text, action_owner, due, author, at FROM notes
             WHERE ($1 = 0 OR at >= $2) AND ($3 = 0 OR action_owner IS NOT NULL)
             ORDER BY id DESC";
        let since = filter.since.map(micros);
        let epoch = Timestamp::UNIX_EPOCH;
        let mut found = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(i64::from(since.is_some()))
                .bind(since.unwrap_or(epoch))
                .bind(i64::from(filter.actions_only))
                .fetch_all(pool)
                .await?
                .iter()
                .map(note)
                .collect::<Result<Vec<Note>, StoreError>>()
        })?;
        if let Some(releases) = &filter.releases {
            found.retain(|note| releases.contains(&note.release));
        }
        found.truncate(NOTES_MAX);
        found.reverse();
        Ok(found)
    }

    /// The gate decisions of `release` that passed at or after `since`: each digest once, at
    /// the first time it was stored, oldest first.
    pub async fn passed_decisions_since(
        &self,
        release: &ReleaseId,
        since: Timestamp,
    ) -> Result<Vec<PassedDecision>, StoreError> {
        const SQL: &str = "SELECT milestone, digest, MIN(evaluated_at) AS at FROM decisions
             WHERE release = $1 AND verdict = $2 AND evaluated_at >= $3
             GROUP BY milestone, digest ORDER BY at, milestone";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .bind(Verdict::Passed.as_str())
                .bind(micros(since))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = rows::Fields::new(row, "decisions", &["milestone", "digest"]);
                    Ok(PassedDecision {
                        milestone: f.text("milestone")?,
                        digest: f.text("digest")?,
                        at: f.time("at")?,
                    })
                })
                .collect()
        })
    }
}
