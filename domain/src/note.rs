//! Meeting minutes: a note about a release (a decision taken, something said), optionally an
//! action item with an owner and a due date. [`plan_note`] checks a new note and names every
//! bad field; the store keeps it with its audit entry.

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
