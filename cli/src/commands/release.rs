//! `tollgate release`: register releases from flags or a YAML file, show and list them, and
//! set the target date of a milestone.

use crate::args::ReleaseCommand;
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_time, or_dash, print_json, short_hash};
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::Path;
pub use tollgate::release_file::{ReleasePlan, parse_component, parse_release_file_with_plan};
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// Runs one `release` command.
pub async fn run(controller: &Controller, command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Create {
            name,
            components,
            description,
            file,
            output,
        } => {
            let (request, plan) = create_request(name, &components, description, file.as_deref())?;
            let release = create(controller, request, plan).await?;
            print_release(&release, output.output)
        }
        ReleaseCommand::Show { name, output } => {
            let release = answer(
                controller
                    .releases()
                    .get_release(pb::GetReleaseRequest { name })
                    .await,
            )?;
            let blocker = blocker_now(controller, &release).await?;
            match output.output {
                Format::Json => print_json(&with_blocker(json::release(&release), blocker)),
                Format::Text => {
                    print!("{}", format_release(&release));
                    println!("blocked by:  {blocker}");
                    Ok(())
                }
            }
        }
        ReleaseCommand::List { pages, output } => {
            let releases = crate::pages::follow(pages, |page_size, page_token| {
                let mut client = controller.releases();
                let request = pb::ListReleasesRequest {
                    page_size,
                    page_token,
                };
                async move {
                    let page = answer(client.list_releases(request).await)?;
                    Ok::<_, crate::client::RpcError>((page.releases, page.next_page_token))
                }
            })
            .await?;
            let mut blockers = Vec::with_capacity(releases.len());
            for release in &releases {
                blockers.push(blocker_now(controller, release).await?);
            }
            match output.output {
                Format::Json => print_json(&json::list(
                    "releases",
                    releases
                        .iter()
                        .zip(blockers)
                        .map(|(release, blocker)| with_blocker(json::release(release), blocker))
                        .collect(),
                )),
                Format::Text => {
                    print!("{}", format_release_table(&releases, &blockers));
                    Ok(())
                }
            }
        }
        ReleaseCommand::Plan {
            name,
            milestone,
            target,
            reason,
            output,
        } => {
            let release = answer(
                controller
                    .releases()
                    .set_milestone_target(pb::SetMilestoneTargetRequest {
                        release: name,
                        milestone,
                        target_date: target,
                        reason: reason.unwrap_or_default(),
                    })
                    .await,
            )?;
            print_release(&release, output.output)
        }
        ReleaseCommand::Customers {
            name,
            customers,
            output,
        } => {
            let release = answer(
                controller
                    .releases()
                    .set_customers(pb::SetCustomersRequest {
                        release: name,
                        customers,
                    })
                    .await,
            )?;
            print_release(&release, output.output)
        }
    }
}

/// The create request from `release create`'s flags or file, with the plan of record a file
/// gives. Built before connecting, so a typo in a flag is reported without a controller.
pub fn create_request(
    name: Option<String>,
    components: &[String],
    description: Option<String>,
    file: Option<&Path>,
) -> anyhow::Result<(pb::CreateReleaseRequest, ReleasePlan)> {
    match (file, name) {
        (Some(file), _) => read_release_file(file),
        (None, Some(name)) => Ok((
            pb::CreateReleaseRequest {
                name,
                components: components
                    .iter()
                    .map(|spec| parse_component(spec))
                    .collect::<anyhow::Result<_>>()?,
                description: description.unwrap_or_default(),
            },
            ReleasePlan::default(),
        )),
        (None, None) => {
            anyhow::bail!("give a release NAME with --component flags, or -f FILE")
        }
    }
}

/// Registers a release, then sets the customers and targets of `plan` (each audited as its
/// own change); returns the release as it stands after the last of them.
pub async fn create(
    controller: &Controller,
    request: pb::CreateReleaseRequest,
    plan: ReleasePlan,
) -> anyhow::Result<pb::Release> {
    let name = request.name.clone();
    let mut release = answer(controller.releases().create_release(request).await)?;
    if !plan.customers.is_empty() {
        let request = pb::SetCustomersRequest {
            release: name.clone(),
            customers: plan.customers,
        };
        release = answer(controller.releases().set_customers(request).await)
            .with_context(|| format!("release {name} was created; setting its customers"))?;
    }
    for target in plan.targets {
        let milestone = target.milestone.clone();
        release = answer(controller.releases().set_milestone_target(target).await).with_context(
            || format!("release {name} was created; setting its {milestone} target"),
        )?;
    }
    Ok(release)
}

pub fn print_release(release: &pb::Release, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&json::release(release)),
        Format::Text => {
            print!("{}", format_release(release));
            Ok(())
        }
    }
}

/// Reads a release YAML file into a create request and the plan of record it gives.
pub fn read_release_file(path: &Path) -> anyhow::Result<(pb::CreateReleaseRequest, ReleasePlan)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading release file {}", path.display()))?;
    parse_release_file_with_plan(&path.display().to_string(), &text)
}

/// A release: components, where it is on its track, and its promotions.
pub fn format_release(release: &pb::Release) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "release {}", release.name);
    if !release.description.is_empty() {
        let _ = writeln!(out, "description: {}", release.description);
    }
    let _ = writeln!(
        out,
        "created:     {}",
        format_time(release.created_at.as_ref())
    );
    let _ = writeln!(out, "milestone:   {}", release.milestone);
    if !release.customers.is_empty() {
        let _ = writeln!(out, "customers:   {}", release.customers.join(", "));
    }
    let _ = writeln!(out, "track:       {}", format_track(release));
    let _ = writeln!(out, "components:");
    let mut table = Table::new(&["NAME", "VERSION", "ARTIFACT", "SHA256"]);
    for component in &release.components {
        table.row(vec![
            component.name.clone(),
            component.version.clone(),
            or_dash(&component.artifact_uri).to_owned(),
            or_dash(short_hash(&component.sha256)).to_owned(),
        ]);
    }
    out.push_str(&table.render("  "));
    if release.targets.is_empty() {
        let _ = writeln!(out, "targets:     none");
    } else {
        let _ = writeln!(out, "targets:");
        for target in &release.targets {
            let _ = writeln!(
                out,
                "  {} by {} (set by {} at {}{})",
                target.milestone,
                target.target_date,
                target.set_by,
                format_time(target.set_at.as_ref()),
                if target.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", target.reason)
                }
            );
        }
    }
    if !release.projections.is_empty() {
        let _ = writeln!(out, "target vs projected:");
        for projection in &release.projections {
            let _ = writeln!(out, "  {}", format_projection(projection));
        }
    }
    if release.promotions.is_empty() {
        let _ = writeln!(out, "promotions:  none");
    } else {
        let _ = writeln!(out, "promotions:");
        for promotion in &release.promotions {
            let _ = writeln!(
                out,
                "  {} -> {} at {} (decision {})",
                promotion.from_milestone,
                promotion.to_milestone,
                format_time(promotion.at.as_ref()),
                short_hash(&promotion.decision_digest)
            );
        }
    }
    out
}

/// The track with the current milestone in brackets: `[lab-qual] -> customer-acceptance -> ...`.
pub fn format_track(release: &pb::Release) -> String {
    let mut parts: Vec<String> = release
        .track
        .iter()
        .map(|milestone| {
            if *milestone == release.milestone {
                format!("[{milestone}]")
            } else {
                milestone.clone()
            }
        })
        .collect();
    let released = tollgate_domain::release::RELEASED;
    parts.push(if release.milestone == released {
        format!("[{released}]")
    } else {
        released.to_owned()
    });
    parts.join(" -> ")
}

/// What blocks `release` now, in one sentence, from its gate evaluated now. A refusal to
/// evaluate (no gate for the milestone, say) is part of the sentence; a release passed every
/// milestone, or halted, needs no evaluation.
async fn blocker_now(controller: &Controller, release: &pb::Release) -> anyhow::Result<String> {
    if release.milestone == tollgate_domain::release::RELEASED || !release.halted_reason.is_empty()
    {
        return Ok(tollgate_wire::release::blocker(
            release,
            &Err(String::new()),
        ));
    }
    let evaluated = controller
        .gates()
        .evaluate_gate(pb::EvaluateGateRequest {
            release: release.name.clone(),
            milestone: String::new(),
            at: None,
        })
        .await;
    let decision = match evaluated {
        Ok(decision) => Ok(decision.into_inner()),
        // Not about the release: the caller cannot ask, or the controller cannot answer.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) =>
        {
            return Err(crate::client::RpcError::from(status).into());
        }
        Err(status) => Err(status.message().to_owned()),
    };
    Ok(tollgate_wire::release::blocker(release, &decision))
}

/// A release's `-o json` object with what blocks it now as `blocked_by`.
fn with_blocker(mut release: serde_json::Value, blocker: String) -> serde_json::Value {
    if let Some(object) = release.as_object_mut() {
        object.insert("blocked_by".to_owned(), serde_json::Value::String(blocker));
    }
    release
}

/// Releases, one per line, each with what blocks it now (`blockers`, in the same order).
pub fn format_release_table(releases: &[pb::Release], blockers: &[String]) -> String {
    if releases.is_empty() {
        return "no releases\n".to_owned();
    }
    let mut table = Table::new(&[
        "NAME",
        "MILESTONE",
        "COMPONENTS",
        "CREATED",
        "TARGET VS PROJECTED",
        "BLOCKED BY",
    ]);
    for (idx, release) in releases.iter().enumerate() {
        table.row(vec![
            release.name.clone(),
            release.milestone.clone(),
            release
                .components
                .iter()
                .map(|c| format!("{}={}", c.name, c.version))
                .collect::<Vec<_>>()
                .join(","),
            format_time(release.created_at.as_ref()),
            format_plan_of_record(release),
            blockers.get(idx).cloned().unwrap_or_default(),
        ]);
    }
    table.render("")
}

/// Per milestone, its target against when it was passed or is projected to be, on one line:
/// `lab-qual 2027-01-15 vs passed 2027-01-10; production - vs 2027-02-03 (measured) AT RISK
/// (after-target)`. Without projections, the targets alone.
pub fn format_plan_of_record(release: &pb::Release) -> String {
    if release.projections.is_empty() {
        return format_targets(release);
    }
    release
        .projections
        .iter()
        .map(format_projection)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One milestone's target against when it was passed or is projected to be:
/// `customer-acceptance 2027-01-20 vs 2027-01-15 (timeouts) AT RISK (after-target)`.
pub fn format_projection(projection: &pb::MilestoneProjection) -> String {
    let finish = tollgate_wire::release::finish_words(projection);
    let risk = tollgate_wire::release::risk_words(projection);
    let risk = if risk.is_empty() {
        risk
    } else {
        format!(" {risk}")
    };
    let waits = tollgate_wire::release::waits_words(projection);
    let risk = if waits.is_empty() {
        risk
    } else {
        format!("{risk}, {waits}")
    };
    format!(
        "{} {} vs {finish}{risk}",
        projection.milestone,
        or_dash(&projection.target_date)
    )
}

/// A release's targets on one line, in track order: `lab-qual 2027-01-15, production
/// 2027-03-01`; `-` when none is set.
pub fn format_targets(release: &pb::Release) -> String {
    if release.targets.is_empty() {
        return "-".to_owned();
    }
    release
        .targets
        .iter()
        .map(|target| format!("{} {}", target.milestone, target.target_date))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::release_file::parse_release_file;

    #[test]
    fn components_parse_with_optional_uri_and_sha() {
        let c = parse_component("driver=550.54.15").expect("valid");
        assert_eq!(
            (c.name.as_str(), c.version.as_str()),
            ("driver", "550.54.15")
        );
        assert!(c.artifact_uri.is_empty() && c.sha256.is_empty());
        let c = parse_component("driver=550.54.15@https://u@host/d.run#abc123").expect("valid");
        assert_eq!(c.version, "550.54.15");
        assert_eq!(c.artifact_uri, "https://u@host/d.run");
        assert_eq!(c.sha256, "abc123");
        let c = parse_component("vbios=96.00.89.00.01#ff").expect("valid");
        assert_eq!(
            (c.version.as_str(), c.sha256.as_str()),
            ("96.00.89.00.01", "ff")
        );
        assert!(parse_component("driver").is_err());
        assert!(parse_component("driver=").is_err());
    }

    #[test]
    fn release_files_parse_and_errors_carry_the_line() {
        let text = "name: r1\ncomponents:\n  - {name: driver, version: '550.54.15', artifact-uri: https://x/d.run}\n";
        let request = parse_release_file("r.yaml", text).expect("valid");
        assert_eq!(request.name, "r1");
        assert_eq!(request.components[0].artifact_uri, "https://x/d.run");
        let error = parse_release_file(
            "r.yaml",
            "name: r1\ncomponents:\n  - {name: driver, vers: 1}\n",
        )
        .expect_err("unknown key");
        let text = error.to_string();
        assert!(text.starts_with("r.yaml:3:"), "{text}");
        assert!(text.contains("vers"), "{text}");
    }

    #[test]
    fn the_example_release_file_parses() {
        let text = include_str!("../../../examples/release.yaml");
        let (request, plan) =
            parse_release_file_with_plan("release.yaml", text).expect("valid example");
        assert_eq!(request.name, "r550-u3");
        assert_eq!(plan.customers, ["acme"]);
        assert_eq!(plan.targets.len(), 2);
        assert_eq!(plan.targets[0].release, "r550-u3");
        assert_eq!(plan.targets[0].milestone, "lab-qual");
        assert_eq!(plan.targets[0].target_date, "2027-01-15");
        assert_eq!(
            plan.targets[1].reason,
            "the customer's fleet upgrade window"
        );
    }

    #[test]
    fn a_release_file_without_a_plan_of_record_gives_none() {
        let text = "name: r1\ncomponents:\n  - {name: driver, version: '550.54.15'}\n";
        let (_, plan) = parse_release_file_with_plan("r.yaml", text).expect("valid");
        assert_eq!(plan, ReleasePlan::default());
        let error = parse_release_file_with_plan(
            "r.yaml",
            "name: r1\ncomponents: []\ntargets:\n  - {milestone: lab-qual, date: 2027-01-15}\n",
        )
        .expect_err("unknown key");
        assert!(error.to_string().starts_with("r.yaml:4:"), "{error}");
    }

    #[test]
    fn targets_fit_on_one_line_in_track_order() {
        let target = |milestone: &str, date: &str| pb::MilestoneTarget {
            milestone: milestone.into(),
            target_date: date.into(),
            ..Default::default()
        };
        let mut release = pb::Release {
            name: "r1".into(),
            ..Default::default()
        };
        assert_eq!(format_targets(&release), "-");
        release.targets = vec![
            target("lab-qual", "2027-01-15"),
            target("production", "2027-03-01"),
        ];
        assert_eq!(
            format_targets(&release),
            "lab-qual 2027-01-15, production 2027-03-01"
        );
        let table = format_release_table(
            std::slice::from_ref(&release),
            &["The lab-qual gate is waiting for evidence: no run.".to_owned()],
        );
        let header = table.lines().next().unwrap_or_default();
        assert!(
            header.contains("  TARGET VS PROJECTED  ") && header.ends_with("  BLOCKED BY"),
            "{table}"
        );
        assert!(
            table.contains("production 2027-03-01  The lab-qual gate"),
            "{table}"
        );
        assert!(
            table.contains("lab-qual 2027-01-15, production 2027-03-01"),
            "{table}"
        );
    }

    #[test]
    fn target_vs_projected_fits_on_one_line() {
        let at = |secs| {
            Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            })
        };
        let release = pb::Release {
            name: "r1".into(),
            projections: vec![
                pb::MilestoneProjection {
                    milestone: "lab-qual".into(),
                    target_date: "2027-01-15".into(),
                    finish: "passed".into(),
                    finish_at: at(1_799_000_000),
                    ..Default::default()
                },
                pb::MilestoneProjection {
                    milestone: "customer-acceptance".into(),
                    target_date: "2027-01-20".into(),
                    finish: "projected".into(),
                    finish_at: at(1_800_000_000),
                    basis: "timeouts".into(),
                    risk: "after-target".into(),
                    waits_for: vec![pb::MilestoneRef {
                        release: "r0".into(),
                        milestone: "customer-acceptance".into(),
                    }],
                    ..Default::default()
                },
                pb::MilestoneProjection {
                    milestone: "production".into(),
                    finish: "after-unknown".into(),
                    after: "customer-acceptance".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            format_plan_of_record(&release),
            "lab-qual 2027-01-15 vs passed 2027-01-03; customer-acceptance 2027-01-20 vs \
             2027-01-15 (timeouts) AT RISK (after-target), waits for r0 customer-acceptance; \
             production - vs after customer-acceptance"
        );
    }

    #[test]
    fn track_marks_the_current_milestone() {
        let release = pb::Release {
            name: "r1".into(),
            milestone: "customer-acceptance".into(),
            track: vec![
                "lab-qual".into(),
                "customer-acceptance".into(),
                "production".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            format_track(&release),
            "lab-qual -> [customer-acceptance] -> production -> released"
        );
    }
}
