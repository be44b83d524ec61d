//! `tollgate status` (the weekly status report, rendered by the controller) and `tollgate note
//! add|list` (the meeting minutes it carries).

use crate::args::{NoteCommand, StatusArgs};
use crate::client::{Controller, answer};
use crate::commands::waiver::parse_time;
use crate::output::{Format, Table, format_time, print_json};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tollgate_proto::v1 as pb;

/// `since` as given: a duration back from `now` (`7d`, `36h`) or a time (RFC 3339 or
/// `YYYY-MM-DD`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(duration) = tollgate_domain::spec::parse_duration(text.trim()) {
        let back = chrono::Duration::from_std(duration)
            .map_err(|_| anyhow::anyhow!("'{text}' is too long ago; give at most a few years"))?;
        return now
            .checked_sub_signed(back)
            .ok_or_else(|| anyhow::anyhow!("'{text}' is too long ago; give at most a few years"));
    }
    parse_time(text.trim()).map_err(|_| {
        anyhow::anyhow!(
            "'{text}' is neither a duration (7d, 36h) nor a time (2026-12-01T08:00:00Z, \
             2026-12-01); give one of them"
        )
    })
}

/// Prints the status report the controller renders.
pub async fn report(controller: &Controller, args: StatusArgs) -> anyhow::Result<()> {
    print!("{}", render(controller, args).await?);
    Ok(())
}

/// The status report `args` asks for, as the controller renders it.
pub async fn render(controller: &Controller, args: StatusArgs) -> anyhow::Result<String> {
    let StatusArgs {
        customer,
        since,
        format,
        minutes,
    } = args;
    let since = parse_since(&since, crate::clock::now())?;
    let report = answer(
        controller
            .status()
            .render_status(pb::RenderStatusRequest {
                customer: customer.unwrap_or_default(),
                since: Some(tollgate_wire::timestamp_to_proto(since)),
                format,
                minutes,
            })
            .await,
    )?;
    Ok(report.text)
}

/// Runs one `note` command.
pub async fn note(controller: &Controller, command: NoteCommand) -> anyhow::Result<()> {
    match command {
        NoteCommand::Add {
            release,
            text,
            action,
            due,
            output,
        } => {
            let note = answer(
                controller
                    .status()
                    .add_note(pb::AddNoteRequest {
                        release,
                        text,
                        action_owner: action.unwrap_or_default(),
                        due: due.unwrap_or_default(),
                    })
                    .await,
            )?;
            print_note(&note, output.output)
        }
        NoteCommand::List {
            release,
            since,
            actions,
            output,
        } => {
            let since = since
                .as_deref()
                .map(|since| parse_since(since, crate::clock::now()))
                .transpose()?
                .map(tollgate_wire::timestamp_to_proto);
            let listed = answer(
                controller
                    .status()
                    .list_notes(pb::ListNotesRequest {
                        release: release.unwrap_or_default(),
                        since,
                        actions_only: actions,
                    })
                    .await,
            )?;
            match output.output {
                Format::Json => {
                    print_json(&Value::Array(listed.notes.iter().map(note_json).collect()))
                }
                Format::Text => {
                    print!("{}", format_notes(&listed.notes));
                    Ok(())
                }
            }
        }
        NoteCommand::Done {
            id,
            comment,
            output,
        } => {
            let note = answer(
                controller
                    .status()
                    .complete_action(pb::CompleteActionRequest {
                        id,
                        comment: comment.unwrap_or_default(),
                    })
                    .await,
            )?;
            print_note(&note, output.output)
        }
    }
}

/// Where a note's action item stands at `today`: `-` without one, `done`, `OVERDUE` once its
/// due day has passed, else `open`.
fn action_state(note: &pb::Note, today: chrono::NaiveDate) -> &'static str {
    if note.action_owner.is_empty() {
        "-"
    } else if note.done_at.is_some() {
        "done"
    } else if chrono::NaiveDate::parse_from_str(&note.due, "%Y-%m-%d").is_ok_and(|due| today > due)
    {
        "OVERDUE"
    } else {
        "open"
    }
}

/// A note as `-o json` prints it.
fn note_json(note: &pb::Note) -> Value {
    json!({
        "id": note.id,
        "release": note.release,
        "text": note.text,
        "action_owner": (!note.action_owner.is_empty()).then_some(&note.action_owner),
        "due": (!note.due.is_empty()).then_some(&note.due),
        "author": note.author,
        "at": format_time(note.at.as_ref()),
        "state": match action_state(note, crate::clock::now().date_naive()) {
            "-" => None,
            state => Some(state.to_lowercase()),
        },
        "done_at": note.done_at.as_ref().map(|at| format_time(Some(at))),
        "done_by": (!note.done_by.is_empty()).then_some(&note.done_by),
        "done_comment": (!note.done_comment.is_empty()).then_some(&note.done_comment),
    })
}

/// Notes, one per line.
pub fn format_notes(notes: &[pb::Note]) -> String {
    if notes.is_empty() {
        return "no notes\n".to_owned();
    }
    let today = crate::clock::now().date_naive();
    let mut table = Table::new(&[
        "ID", "RELEASE", "AT", "AUTHOR", "ACTION", "DUE", "STATE", "TEXT",
    ]);
    for note in notes {
        let or_dash = |text: &str| {
            if text.is_empty() {
                "-".to_owned()
            } else {
                text.to_owned()
            }
        };
        table.row(vec![
            note.id.to_string(),
            note.release.clone(),
            format_time(note.at.as_ref()),
            note.author.clone(),
            or_dash(&note.action_owner),
            or_dash(&note.due),
            action_state(note, today).to_owned(),
            match (note.done_comment.as_str(), note.done_by.as_str()) {
                (_, "") => note.text.clone(),
                ("", by) => format!("{} (done by {by})", note.text),
                (comment, by) => format!("{} (done by {by}: {comment})", note.text),
            },
        ]);
    }
    table.render("")
}

/// One note as `note add` and `note done` print it.
fn print_note(note: &pb::Note, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&note_json(note)),
        Format::Text => {
            print!("{}", format_notes(std::slice::from_ref(note)));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-07T09:00:00Z".parse().expect("a time")
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        assert_eq!(
            parse_since("7d", now()).expect("a duration"),
            "2026-11-30T09:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("a time")
        );
        assert_eq!(
            parse_since("2026-12-01", now()).expect("a date"),
            "2026-12-01T00:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("a time")
        );
        let refused = parse_since("last week", now()).expect_err("neither");
        assert!(
            refused.to_string().contains("neither a duration"),
            "{refused}"
        );
    }
}
