//! Meeting minutes: a note about a release (a decision taken, something said), optionally an
//! action item with an owner and a due date. [`plan_note`] checks a new note and names every
//! bad field; the store keeps it with its audit entry. An action item is open until it is
//! done, once ([`plan_done`]).

use crate::{ReleaseId, Timestamp, limits};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// An action item: who does it, by when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Who does it.
    pub owner: String,
    /// The day (UTC) it is due.
    pub due: NaiveDate,
}

impl Action {
    /// Whether it is overdue at `now`: its due day has passed.
    pub fn overdue(&self, now: Timestamp) -> bool {
        now.date_naive() > self.due
    }
}

/// A note as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Its number, from 1.
    pub id: i64,
    /// The release it is about.
    pub release: ReleaseId,
    /// What was said or decided.
    pub text: String,
    /// The action item it makes, if any.
    pub action: Option<Action>,
    /// Who added it.
    pub author: String,
    /// When.
    pub at: Timestamp,
    /// When its action item was done; `None` while it is open (or the note has none).
    #[serde(default)]
    pub done: Option<Done>,
}

impl Note {
    /// Whether it is an action item not done yet.
    pub fn is_open_action(&self) -> bool {
        self.action.is_some() && self.done.is_none()
    }
}

/// An action item done: when, by whom, with what comment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// When it was marked done.
    pub at: Timestamp,
    /// Who marked it done.
    pub by: String,
    /// What they said about it, if anything.
    pub comment: Option<String>,
}

/// Why an action item cannot be marked done: the request is fine, the note is not in a state
/// to take it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DoneRefusal {
    /// The note records no action item.
    #[error(
        "note {id} is not an action item (it has no owner and due date); only an action item can be done"
    )]
    NotAnAction {
        /// The note.
        id: i64,
    },
    /// It was done already.
    #[error(
        "note {id} was done already, by {by} at {at}; it stays done (add a new note to say more)"
    )]
    AlreadyDone {
        /// The note.
        id: i64,
        /// Who marked it done.
        by: String,
        /// When, RFC 3339.
        at: String,
    },
}

/// Marks `note`'s action item done by `actor` at `now` with `comment` (trimmed; empty for
/// none): refused when the note is not an action item or is done already.
pub fn plan_done(
    note: &Note,
    actor: &str,
    comment: &str,
    now: Timestamp,
) -> Result<Done, DoneRefusal> {
    if note.action.is_none() {
        return Err(DoneRefusal::NotAnAction { id: note.id });
    }
    if let Some(done) = &note.done {
        return Err(DoneRefusal::AlreadyDone {
            id: note.id,
            by: done.by.clone(),
            at: done.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }
    let comment = comment.trim();
    Ok(Done {
        at: now,
        by: actor.to_owned(),
        comment: (!comment.is_empty()).then(|| comment.to_owned()),
    })
}

/// A note decided, not stored yet (the store numbers it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNote {
    /// The release it is about.
    pub release: ReleaseId,
    /// What was said or decided, trimmed.
    pub text: String,
    /// The action item it makes, if any.
    pub action: Option<Action>,
    /// Who adds it.
    pub author: String,
    /// When.
    pub at: Timestamp,
}

/// Why a note cannot be added: the request field and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct NoteRefusal {
    /// The request field.
    pub field: &'static str,
    /// What is wrong with it and what to do.
    pub message: String,
}

/// Checks a note about `release` saying `text`, with an action item when `owner` or `due`
/// (`YYYY-MM-DD`) is given (both then), added by `author` at `now`. Every bad field is listed.
/// The texts' lengths are the request's bounds, checked where the request arrives.
pub fn plan_note(
    release: &str,
    text: &str,
    owner: &str,
    due: &str,
    author: &str,
    now: Timestamp,
) -> Result<NewNote, Vec<NoteRefusal>> {
    let mut refusals = Vec::new();
    let mut refuse = |field: &'static str, message: String| {
        refusals.push(NoteRefusal { field, message });
    };
    if release.trim().is_empty() {
        refuse(
            "release",
            "is empty; give the release the note is about".into(),
        );
    }
    if text.trim().is_empty() {
        refuse("text", "is empty; say what was said or decided".into());
    }
    let (owner, due) = (owner.trim(), due.trim());
    let date = NaiveDate::parse_from_str(due, "%Y-%m-%d").ok();
    if !due.is_empty() && date.is_none() {
        refuse(
            "due",
            format!(
                "{} is not a date; give one as YYYY-MM-DD",
                limits::quote(due)
            ),
        );
    }
    if owner.is_empty() && !due.is_empty() {
        refuse(
            "action_owner",
            "is empty but a due date is given; name who owns the action".into(),
        );
    }
    if !owner.is_empty() && due.is_empty() {
        refuse(
            "due",
            "is empty but an action owner is given; give the due date as YYYY-MM-DD".into(),
        );
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(NewNote {
        release: ReleaseId::from(release.trim()),
        text: text.trim().to_owned(),
        action: date.map(|due| Action {
            owner: owner.to_owned(),
            due,
        }),
        author: author.to_owned(),
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    #[test]
    fn a_note_with_an_action_item() {
        let note = plan_note(" r550 ", " ship it ", "bob", "2027-01-15", "alice", at(0))
            .expect("a valid note");
        assert_eq!(note.release, ReleaseId::from("r550"));
        assert_eq!(note.text, "ship it");
        let action = note.action.expect("an action item");
        assert_eq!(action.owner, "bob");
        assert_eq!(action.due.to_string(), "2027-01-15");
        assert_eq!(note.author, "alice");
    }

    #[test]
    fn a_note_without_an_action_item() {
        let note = plan_note("r550", "decided to wait", "", "", "alice", at(0)).expect("valid");
        assert_eq!(note.action, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let refusals =
            plan_note(" ", " ", "", "2027-02-30", "alice", at(0)).expect_err("four refusals");
        let fields: Vec<&str> = refusals.iter().map(|r| r.field).collect();
        assert_eq!(fields, ["release", "text", "due", "action_owner"]);
        assert_eq!(
            refusals[2].to_string(),
            "due '2027-02-30' is not a date; give one as YYYY-MM-DD"
        );
        let refusals = plan_note("r550", "x", "bob", "", "alice", at(0)).expect_err("no due");
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].field, "due");
    }

    fn action_item(id: i64) -> Note {
        Note {
            id,
            release: ReleaseId::from("r550"),
            text: "replace the fan".into(),
            action: Some(Action {
                owner: "carol".into(),
                due: "2026-01-05".parse().expect("a date"),
            }),
            author: "alice".into(),
            at: at(0),
            done: None,
        }
    }

    #[test]
    fn an_action_item_is_done_once() {
        let mut note = action_item(4);
        assert!(note.is_open_action());
        let done = plan_done(&note, "carol", "  swapped it  ", at(60)).expect("open");
        assert_eq!(
            done,
            Done {
                at: at(60),
                by: "carol".into(),
                comment: Some("swapped it".into()),
            }
        );
        note.done = Some(done);
        assert!(!note.is_open_action());
        let again = plan_done(&note, "bob", "", at(120)).expect_err("done already");
        assert_eq!(
            again.to_string(),
            "note 4 was done already, by carol at 2026-01-01T00:01:00Z; it stays done (add a \
             new note to say more)"
        );
        let no_comment = plan_done(&action_item(5), "bob", " ", at(0)).expect("open");
        assert_eq!(no_comment.comment, None);
    }

    #[test]
    fn a_note_without_an_action_item_cannot_be_done() {
        let mut note = action_item(7);
        note.action = None;
        assert!(!note.is_open_action());
        assert_eq!(
            plan_done(&note, "bob", "", at(0)),
            Err(DoneRefusal::NotAnAction { id: 7 })
        );
    }

    #[test]
    fn an_action_is_overdue_after_its_due_day() {
        let action = Action {
            owner: "bob".into(),
            due: "2026-01-01".parse().expect("a date"),
        };
        assert!(!action.overdue(at(0)));
        assert!(!action.overdue(at(86_399)));
        assert!(action.overdue(at(86_400)));
    }
}
