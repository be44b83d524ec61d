//! `tollgate report`: render a release's customer acceptance report and write it to a file.

use crate::args::{ReportArgs, ReportFormat};
use crate::client::{Controller, answer};
use crate::output::print_json;
use anyhow::Context as _;
use serde_json::json;
use std::path::{Path, PathBuf};
use tollgate_proto::v1 as pb;

/// Runs `report`: writes the bytes, prints the path and the decision digest.
pub async fn run(controller: &Controller, args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs {
        release,
        milestone,
        format,
        file,
        json: as_json,
    } = args;
    let report = render(controller, &release, milestone.as_deref(), format).await?;
    let path = file.unwrap_or_else(|| default_path(&release, milestone.as_deref(), &report));
    write(&path, &report)?;
    if as_json {
        print_json(&json!({
            "path": path.display().to_string(),
            "media_type": report.media_type,
            "bytes": report.content.len(),
            "decision_digest": report.decision_digest,
        }))
    } else {
        println!("wrote {}", path.display());
        println!("decision digest: {}", report.decision_digest);
        Ok(())
    }
}

/// Renders a report on the controller.
pub async fn render(
    controller: &Controller,
    release: &str,
    milestone: Option<&str>,
    format: ReportFormat,
) -> anyhow::Result<pb::Report> {
    Ok(answer(
        controller
            .reports()
            .render_report(pb::RenderReportRequest {
                release: release.to_owned(),
                milestone: milestone.unwrap_or_default().to_owned(),
                format: format.as_str().to_owned(),
            })
            .await,
    )?)
}

/// Writes a report's bytes exactly as rendered, so its digest still checks.
pub fn write(path: &Path, report: &pb::Report) -> anyhow::Result<()> {
    std::fs::write(path, &report.content)
        .with_context(|| format!("writing report {}", path.display()))
}

/// `RELEASE-MILESTONE.EXT` (or `RELEASE.EXT` without a milestone) in the current directory.
pub fn default_path(release: &str, milestone: Option<&str>, report: &pb::Report) -> PathBuf {
    let extension = if report.file_extension.is_empty() {
        "txt"
    } else {
        report.file_extension.trim_start_matches('.')
    };
    match milestone {
        Some(milestone) => PathBuf::from(format!("{release}-{milestone}.{extension}")),
        None => PathBuf::from(format!("{release}.{extension}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_use_the_suggested_extension() {
        let report = pb::Report {
            file_extension: ".html".into(),
            ..Default::default()
        };
        assert_eq!(
            default_path("r1", Some("lab-qual"), &report),
            PathBuf::from("r1-lab-qual.html")
        );
        assert_eq!(default_path("r1", None, &report), PathBuf::from("r1.html"));
    }
}
