//! `tollgate audit list|verify`: reading the hash-chained audit log and checking it.

use crate::Reported;
use crate::args::AuditCommand;
use crate::client::{Controller, answer};
use crate::commands::waiver::parse_time;
use crate::output::{Format, Table, format_time, print_json};
use serde_json::{Value, json};
use tollgate_proto::v1 as pb;

/// Runs one `audit` command.
pub async fn run(controller: &Controller, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            release,
            actor,
            since,
            until,
            pages,
            output,
        } => {
            let since = since
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map(tollgate_wire::timestamp_to_proto);
            let until = until
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map(tollgate_wire::timestamp_to_proto);
            let (release, actor) = (release.unwrap_or_default(), actor.unwrap_or_default());
            let entries = crate::pages::follow(pages, |page_size, page_token| {
                let mut client = controller.audit();
                let request = pb::ListAuditRequest {
                    release: release.clone(),
                    actor: actor.clone(),
                    since,
                    until,
                    page_size,
                    page_token,
                };
                async move {
                    let page = answer(client.list_audit(request).await)?;
                    Ok::<_, crate::client::RpcError>((page.entries, page.next_page_token))
                }
            })
            .await?;
            let listed = pb::ListAuditResponse {
                entries,
                next_page_token: String::new(),
            };
            match output.output {
                Format::Json => print_json(&Value::Array(
                    listed
                        .entries
                        .iter()
                        .map(tollgate_wire::json::audit_entry)
                        .collect(),
                )),
                Format::Text => {
                    print!("{}", format_entries(&listed.entries));
                    Ok(())
                }
            }
        }
        AuditCommand::Verify { output } => {
            let verified = answer(
                controller
                    .audit()
                    .verify_audit(pb::VerifyAuditRequest {})
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&json!({
                    "ok": verified.ok,
                    "head_hash": verified.head_hash,
                    "n_entries": verified.n_entries,
                    "broken_seq": verified.broken_seq,
                    "reason": verified.reason,
                }))?,
                Format::Text => print!("{}", format_verified(&verified)),
            }
            if verified.ok {
                Ok(())
            } else {
                Err(Reported(1).into())
            }
        }
    }
}

/// What `audit verify` prints.
pub fn format_verified(verified: &pb::VerifyAuditResponse) -> String {
    if verified.ok {
        format!(
            "audit log intact: {} entries, head {}\n",
            verified.n_entries, verified.head_hash
        )
    } else {
        format!(
            "AUDIT LOG BROKEN at entry {}: {}\n",
            verified.broken_seq, verified.reason
        )
    }
}

/// A table of audit entries.
pub fn format_entries(entries: &[pb::AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_owned();
    }
    let mut table = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "HASH"]);
    for entry in entries {
        table.row(vec![
            entry.seq.to_string(),
            format_time(entry.at.as_ref()),
            entry.actor.clone(),
            entry.action.clone(),
            entry.subject.clone(),
            entry.hash.chars().take(12).collect(),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_says_what_broke() {
        let ok = pb::VerifyAuditResponse {
            ok: true,
            head_hash: "abc".into(),
            n_entries: 3,
            ..Default::default()
        };
        assert_eq!(
            format_verified(&ok),
            "audit log intact: 3 entries, head abc\n"
        );
        let broken = pb::VerifyAuditResponse {
            ok: false,
            broken_seq: 2,
            reason: "the entry was edited".into(),
            ..Default::default()
        };
        assert!(format_verified(&broken).contains("BROKEN at entry 2: the entry was edited"));
    }
}
