//! Meeting minutes in the store: a note (optionally an action item) is added with its audit
//! entry in one transaction; an action item is marked done once, by compare-and-set on
//! `done_at IS NULL`, with its audit entry; notes are read back by release and time. Also the
//! passed gate decisions a status report lists.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, micros, rows, text};
use tollgate_domain::gate::Verdict;
use tollgate_domain::note::{Action, Done, NewNote, Note};
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
        done: match f.opt_time("done_at")? {
            None => None,
            Some(at) => Some(Done {
                at,
                by: f.opt_text("done_by")?.unwrap_or_default(),
                comment: f.opt_text("comment")?,
            }),
        },
    })
}

/// The columns a note is read from.
macro_rules! note_columns {
    () => {
        "id, release, text, action_owner, due, author, at, done_at, done_by, comment"
    };
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
                done: None,
            })
        })
    }

    /// Note `id`, or `None`.
    pub async fn note(&self, id: i64) -> Result<Option<Note>, StoreError> {
        const SQL: &str = concat!("SELECT ", note_columns!(), " FROM notes WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(note)
                .transpose()
        })
    }

    /// Marks note `id`'s action item `done`, with its audit entry `audit`, in one
    /// transaction, only if it is still open (compare-and-set on `done_at IS NULL`):
    /// `Conflict` when another writer marked it first; returns it as stored.
    pub async fn complete_action(
        &self,
        id: i64,
        done: &Done,
        audit: &AuditNote,
    ) -> Result<Note, StoreError> {
        const SET: &str = "UPDATE notes SET done_at = $1, done_by = $2, comment = $3
             WHERE id = $4 AND action_owner IS NOT NULL AND done_at IS NULL";
        const GET: &str = concat!("SELECT ", note_columns!(), " FROM notes WHERE id = $1");
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(SET)
                .bind(micros(done.at))
                .bind(&done.by)
                .bind(done.comment.as_deref().map(text))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("note {id}"),
                    detail: "its action item was done meanwhile; read it again".into(),
                });
            }
            let row = sqlx::query(GET).bind(id).fetch_one(&mut *tx).await?;
            let stored = note(&row)?;
            append_audit!(tx, audit);
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// The notes `filter` lets through, oldest first: the newest [`NOTES_MAX`] of them.
    pub async fn notes(&self, filter: &NoteFilter) -> Result<Vec<Note>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            note_columns!(),
            " FROM notes
             WHERE ($1 = 0 OR at >= $2) AND ($3 = 0 OR action_owner IS NOT NULL)
             ORDER BY id DESC"
        );
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
