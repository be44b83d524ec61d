//! `tollgate promote`: move a release past its current milestone when its gate passed.

use crate::Reported;
use crate::args::PromoteArgs;
use crate::client::{Controller, RpcError, answer};
use crate::output::{Format, print_json};
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// Exit code of a promotion the gate refused.
const REFUSED: u8 = 3;

/// Runs `promote`. A refusal (FailedPrecondition) is a normal answer, not a crash: it prints
/// `promotion refused: <why>` to stderr and exits 3.
pub async fn run(controller: &Controller, args: PromoteArgs) -> anyhow::Result<()> {
    let PromoteArgs { release, output } = args;
    match promote(controller, &release).await? {
        Ok(response) => match output.output {
            Format::Json => print_json(&json::promote_response(&response)),
            Format::Text => {
                print!("{}", format_promoted(&release, &response));
                Ok(())
            }
        },
        // With -o json the refusal is the JSON error on stdout (exit code 3 all the same).
        Err(refusal) if output.output == Format::Json => Err(refusal.into()),
        Err(refusal) => {
            eprintln!("promotion refused: {refusal}");
            Err(Reported(REFUSED).into())
        }
    }
}

/// Asks for the promotion: the inner `Err` is the controller's refusal, the outer one any
/// other failure.
pub async fn promote(
    controller: &Controller,
    release: &str,
) -> anyhow::Result<Result<pb::PromoteResponse, RpcError>> {
    match answer(
        controller
            .releases()
            .promote(pb::PromoteRequest {
                name: release.to_owned(),
            })
            .await,
    ) {
        Ok(response) => Ok(Ok(response)),
        Err(error) if error.code == tonic::Code::FailedPrecondition => Ok(Err(error)),
        Err(error) => Err(error.into()),
    }
}

/// `r550-u3 promoted: lab-qual -> customer-acceptance` and the decision digest.
pub fn format_promoted(release: &str, response: &pb::PromoteResponse) -> String {
    let promotion = response
        .release
        .as_ref()
        .and_then(|release| release.promotions.last());
    let digest = response
        .decision
        .as_ref()
        .map(|decision| decision.digest.as_str())
        .or(promotion.map(|p| p.decision_digest.as_str()))
        .unwrap_or("-");
    match promotion {
        Some(promotion) => format!(
            "release {release} promoted: {} -> {}\ndecision digest: {digest}\n",
            promotion.from_milestone, promotion.to_milestone
        ),
        None => format!("release {release} promoted\ndecision digest: {digest}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotions_print_from_to_and_digest() {
        let response = pb::PromoteResponse {
            release: Some(pb::Release {
                name: "r1".into(),
                promotions: vec![pb::Promotion {
                    from_milestone: "lab-qual".into(),
                    to_milestone: "customer-acceptance".into(),
                    at: None,
                    decision_digest: "d1".into(),
                    actor: "alice".into(),
                }],
                ..Default::default()
            }),
            decision: Some(pb::Decision {
                digest: "d1".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            format_promoted("r1", &response),
            "release r1 promoted: lab-qual -> customer-acceptance\ndecision digest: d1\n"
        );
    }
}
