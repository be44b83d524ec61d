//! `tollgate token create|list|revoke`: API tokens made, listed and revoked by an admin. The
//! secret is printed once, on `create`; the controller keeps only its hash.

use crate::args::TokenCommand;
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_time, print_json};
use serde_json::Value;
use tollgate_proto::v1 as pb;

/// Parses a token's lifetime such as `90d`, `12h` or `2w` into whole seconds.
pub fn parse_expires(text: &str) -> anyhow::Result<i64> {
    let duration = tollgate_domain::spec::parse_duration(text)
        .map_err(|err| anyhow::anyhow!("--expires {text}: {err}; give a lifetime such as 90d"))?;
    match i64::try_from(duration.as_secs()) {
        Ok(0) | Err(_) => {
            anyhow::bail!("--expires {text}: give a lifetime of at least 1s, such as 90d")
        }
        Ok(seconds) => Ok(seconds),
    }
}

/// Runs one `token` command.
pub async fn run(controller: &Controller, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            role,
            customer,
            expires,
            output,
        } => {
            let request = pb::CreateTokenRequest {
                name,
                role,
                customer: customer.unwrap_or_default(),
                ttl_seconds: parse_expires(&expires)?,
            };
            let created = answer(controller.tokens().create_token(request).await)?;
            let token = created.token.unwrap_or_default();
            match output.output {
                Format::Json => {
                    let mut value = tollgate_wire::json::api_token(&token);
                    value["secret"] = Value::String(created.secret);
                    print_json(&value)
                }
                Format::Text => {
                    print!("{}", format_tokens(std::slice::from_ref(&token)));
                    println!("secret (shown this once; keep it in a file only you can read):");
                    println!("{}", created.secret);
                    Ok(())
                }
            }
        }
        TokenCommand::List { output } => {
            let listed = answer(
                controller
                    .tokens()
                    .list_tokens(pb::ListTokensRequest {})
                    .await,
            )?;
            print_tokens(&listed.tokens, output.output)
        }
        TokenCommand::Revoke { name, output } => {
            let revoked = answer(
                controller
                    .tokens()
                    .revoke_token(pb::RevokeTokenRequest { name })
                    .await,
            )?;
            print_tokens(std::slice::from_ref(&revoked), output.output)
        }
    }
}

fn print_tokens(tokens: &[pb::ApiToken], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&Value::Array(
            tokens.iter().map(tollgate_wire::json::api_token).collect(),
        )),
        Format::Text => {
            print!("{}", format_tokens(tokens));
            Ok(())
        }
    }
}

/// Tokens as a table, one line each.
pub fn format_tokens(tokens: &[pb::ApiToken]) -> String {
    if tokens.is_empty() {
        return "no API tokens (bootstrap tokens given by flag or file are not listed)\n"
            .to_owned();
    }
    let mut table = Table::new(&["NAME", "ROLE", "CUSTOMER", "BY", "EXPIRES", "REVOKED"]);
    for token in tokens {
        table.row(vec![
            token.name.clone(),
            token.role.clone(),
            if token.customer.is_empty() {
                "-".to_owned()
            } else {
                token.customer.clone()
            },
            token.created_by.clone(),
            format_time(token.expires_at.as_ref()),
            token
                .revoked_at
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| format_time(Some(t))),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_parse_or_say_how() {
        assert_eq!(parse_expires("90d").unwrap(), 90 * 24 * 3600);
        let err = parse_expires("soon").unwrap_err().to_string();
        assert!(err.contains("such as 90d"), "{err}");
        assert!(parse_expires("0s").is_err());
    }

    #[test]
    fn token_tables_never_show_a_secret_column() {
        let token = pb::ApiToken {
            name: "ci".into(),
            role: "operator".into(),
            ..Default::default()
        };
        let text = format_tokens(&[token]);
        assert!(text.contains("ci") && text.contains("operator"), "{text}");
        assert!(!text.to_lowercase().contains("secret"), "{text}");
    }
}
