//! `tollgate node telemetry NODE`: a node's fleet telemetry history, as a table of one row per
//! bucket and GPU with each field's mean and range, or as JSON.

use crate::args::TelemetryArgs;
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_number, format_time, print_json};
use anyhow::Context as _;
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// The fields a text table shows when none are asked for.
pub const TEXT_FIELDS: [&str; 4] = ["gpu_temp_c", "power_w", "sm_clock_mhz", "gpu_util_pct"];

/// The request `node telemetry` sends at `now`.
pub fn request(
    args: &TelemetryArgs,
    format: Format,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<pb::GetNodeTelemetryRequest> {
    let span = tollgate_domain::spec::parse_duration(&args.since)
        .map_err(anyhow::Error::msg)
        .context("--since")?;
    let since = chrono::Duration::from_std(span)
        .ok()
        .and_then(|span| now.checked_sub_signed(span))
        .context("--since reaches before any time the controller keeps; give a shorter span")?;
    let resolution_seconds = match &args.resolution {
        None => 0,
        Some(text) => {
            let width = tollgate_domain::spec::parse_duration(text)
                .map_err(anyhow::Error::msg)
                .context("--resolution")?;
            u32::try_from(width.as_secs()).context("--resolution is too wide")?
        }
    };
    let fields = if args.fields.is_empty() && format == Format::Text {
        TEXT_FIELDS.iter().map(|name| (*name).to_owned()).collect()
    } else {
        args.fields.clone()
    };
    Ok(pb::GetNodeTelemetryRequest {
        node: args.name.clone(),
        since: Some(tollgate_wire::timestamp_to_proto(since)),
        until: None,
        gpu_index: args.gpu,
        fields,
        resolution_seconds,
        limit: args.limit,
    })
}

/// Runs `node telemetry`.
pub async fn run(
    controller: &Controller,
    args: TelemetryArgs,
    format: Format,
) -> anyhow::Result<()> {
    let request = request(&args, format, crate::clock::now())?;
    let fields = request.fields.clone();
    let telemetry = answer(controller.nodes().get_node_telemetry(request).await)?;
    match format {
        Format::Json => print_json(&json::node_telemetry(&telemetry)),
        Format::Text => {
            print!("{}", format_telemetry(&telemetry, &fields));
            Ok(())
        }
    }
}

/// The text answer: a heading saying what was read (and that it is simulated when it is),
/// then one row per bucket and GPU, each field's mean with its range.
pub fn format_telemetry(telemetry: &pb::NodeTelemetry, fields: &[String]) -> String {
    let simulated = if telemetry.gpu_source == "simulated" {
        " (SIMULATED GPUs: made-up readings, not a real GPU's)"
    } else {
        ""
    };
    let mut out = format!(
        "node {}: fleet telemetry in {} s buckets (history kept: {}){simulated}\n",
        telemetry.node, telemetry.resolution_seconds, telemetry.history
    );
    if telemetry.buckets.is_empty() {
        out.push_str(
            "no samples in that span (agents send them while no step runs, every \
             --fleet-interval; try a longer --since)\n",
        );
        return out;
    }
    let mut header = vec!["START".to_owned(), "GPU".to_owned()];
    header.extend(
        fields
            .iter()
            .map(|field| format!("{field} mean [min..max]")),
    );
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for bucket in &telemetry.buckets {
        let mut row = vec![
            format_time(bucket.start.as_ref()),
            bucket.gpu_index.to_string(),
        ];
        for name in fields {
            let cell = bucket
                .fields
                .iter()
                .find(|stat| &stat.field == name || dcgm_alias(name, &stat.field))
                .map_or_else(
                    || "-".to_owned(),
                    |stat| {
                        format!(
                            "{} [{}..{}]",
                            format_number(stat.mean),
                            format_number(stat.min),
                            format_number(stat.max)
                        )
                    },
                );
            row.push(cell);
        }
        table.row(row);
    }
    out.push_str(&table.render(""));
    if telemetry.truncated {
        out.push_str("more buckets match: raise --limit (up to 2000) or shorten --since\n");
    }
    out
}

/// Whether `asked` is the DCGM name of the Tollgate field `name`.
fn dcgm_alias(asked: &str, name: &str) -> bool {
    asked
        .parse::<tollgate_domain::telemetry::Field>()
        .is_ok_and(|field| field.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn args() -> TelemetryArgs {
        TelemetryArgs {
            name: "n1".into(),
            since: "6h".into(),
            gpu: Some(3),
            fields: Vec::new(),
            resolution: Some("1m".into()),
            limit: 100,
        }
    }

    #[test]
    fn the_request_reaches_back_since_and_names_the_tier() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        let request = request(&args(), Format::Text, now).expect("request");
        assert_eq!(
            request.since,
            Some(tollgate_wire::timestamp_to_proto(
                now - chrono::Duration::hours(6)
            ))
        );
        assert_eq!(
            (request.gpu_index, request.resolution_seconds, request.limit),
            (Some(3), 60, 100)
        );
        assert_eq!(request.fields, TEXT_FIELDS);
        // JSON asks for every field unless told.
        let request = super::request(&args(), Format::Json, now).expect("request");
        assert!(request.fields.is_empty());
        let bad = TelemetryArgs {
            since: "six hours".into(),
            ..args()
        };
        let err = super::request(&bad, Format::Text, now).unwrap_err();
        assert!(format!("{err:#}").contains("--since"), "{err:#}");
    }

    #[test]
    fn the_table_says_simulated_and_shows_each_field_s_mean_and_range() {
        let telemetry = pb::NodeTelemetry {
            node: "n1".into(),
            resolution_seconds: 10,
            buckets: vec![pb::TelemetryBucket {
                gpu_index: 0,
                start: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                fields: vec![pb::FieldStat {
                    field: "gpu_temp_c".into(),
                    min: 40.0,
                    mean: 41.5,
                    max: 43.0,
                    samples: 2,
                }],
            }],
            truncated: true,
            gpu_source: "simulated".into(),
            history: "10s:24h,1m:720h".into(),
        };
        let text = format_telemetry(
            &telemetry,
            &["DCGM_FI_DEV_GPU_TEMP".to_owned(), "power_w".to_owned()],
        );
        assert!(text.contains("SIMULATED GPUs"), "{text}");
        assert!(text.contains("41.5 [40..43]"), "{text}");
        assert!(text.contains("raise --limit"), "{text}");
        let real = pb::NodeTelemetry {
            gpu_source: "nvml".into(),
            buckets: Vec::new(),
            ..telemetry
        };
        let text = format_telemetry(&real, &[]);
        assert!(!text.contains("SIMULATED"), "{text}");
        assert!(text.contains("no samples in that span"), "{text}");
    }
}
