//! Maintenance windows: a span of time in which no job starts on the nodes carrying one label
//! value (`rack=r12`, `site=lab-a`). Jobs already running go on; jobs waiting for those nodes
//! stay pending until the window ends (or is ended early).

use crate::Timestamp;
use crate::fleet::Labels;
use serde::{Deserialize, Serialize};

/// The longest window: a longer absence is a cordon or a drain, not maintenance.
pub const MAX_WINDOW_DAYS: i64 = 31;

/// A maintenance window of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Its id (`mw-...`).
    pub id: String,
    /// The label key it covers (`rack`).
    pub key: String,
    /// The label value it covers (`r12`).
    pub value: String,
    /// When it starts.
    pub starts_at: Timestamp,
    /// When it ends (exclusive); moved to the time it was ended early, if it was.
    pub ends_at: Timestamp,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who created it.
    pub created_by: String,
}

impl MaintenanceWindow {
    /// Whether the window holds back a node with `labels` at `now`.
    pub fn covers(&self, labels: &Labels, now: Timestamp) -> bool {
        self.starts_at <= now
            && now < self.ends_at
            && labels.get(&self.key).is_some_and(|v| *v == self.value)
    }

    /// `rack=r12`.
    pub fn label(&self) -> String {
        format!("{}={}", self.key, self.value)
    }

    /// Whether the window is over at `now`.
    pub fn is_over(&self, now: Timestamp) -> bool {
        self.ends_at <= now
    }

    /// When the window ends if ended at `now`: now, or its start for one not started yet
    /// (withdrawn). Refused for a window over already.
    pub fn end_at(&self, now: Timestamp) -> Result<Timestamp, String> {
        if self.is_over(now) {
            return Err(format!(
                "maintenance window {} is over already; `tollgate maintenance list --all` shows it",
                self.id
            ));
        }
        Ok(now.max(self.starts_at))
    }
}

/// The window holding back a node with `labels` at `now`, if any (the one ending last).
pub fn holding<'a>(
    windows: &'a [MaintenanceWindow],
    labels: &Labels,
    now: Timestamp,
) -> Option<&'a MaintenanceWindow> {
    windows
        .iter()
        .filter(|window| window.covers(labels, now))
        .max_by_key(|window| window.ends_at)
}

/// Why a node is held back by `window`, for a person: `n1 is in maintenance window mw-1
/// (rack=r12) until 2026-12-06T06:00:00Z: PDU swap`.
pub fn explain(node: &str, window: &MaintenanceWindow) -> String {
    format!(
        "{node} is in maintenance window {} ({}) until {}: {}",
        window.id,
        window.label(),
        window
            .ends_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        window.reason
    )
}

/// Splits `rack=r12` into its key and value.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "'{text}' is not a label; write KEY=VALUE, for example rack=r12"
        )),
    }
}

/// Every problem with a new window, as (field, problem): the label, the span (`ends_at` after
/// `starts_at` and after `now`, at most [`MAX_WINDOW_DAYS`]) and the reason.
pub fn check_new(
    label: &str,
    starts_at: Timestamp,
    ends_at: Timestamp,
    reason: &str,
    now: Timestamp,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Err(problem) = parse_label(label) {
        problems.push(("label", problem));
    }
    if ends_at <= starts_at {
        problems.push((
            "ends_at",
            "is not after starts_at; give a window that ends after it starts".to_owned(),
        ));
    } else if ends_at <= now {
        problems.push((
            "ends_at",
            "is in the past; a window must end in the future".to_owned(),
        ));
    }
    if ends_at - starts_at > chrono::Duration::days(MAX_WINDOW_DAYS) {
        problems.push((
            "ends_at",
            format!(
                "makes the window longer than {MAX_WINDOW_DAYS} days; cordon or drain nodes \
                 taken out for longer"
            ),
        ));
    }
    if reason.trim().is_empty() {
        problems.push((
            "reason",
            "is empty; say why (the audit log keeps it)".to_owned(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    fn window(label: &str, from: i64, to: i64) -> MaintenanceWindow {
        let (key, value) = parse_label(label).expect("label");
        MaintenanceWindow {
            id: format!("mw-{label}"),
            key,
            value,
            starts_at: at(from),
            ends_at: at(to),
            reason: "PDU swap".into(),
            created_by: "ops".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_window_holds_back_only_its_label_value_from_its_start_until_its_end() {
        let w = window("rack=r12", 100, 200);
        let r12 = labels(&[("rack", "r12"), ("site", "lab-a")]);
        assert!(!w.covers(&r12, at(99)));
        assert!(w.covers(&r12, at(100)));
        assert!(w.covers(&r12, at(199)));
        assert!(!w.covers(&r12, at(200)), "the end is exclusive");
        assert!(!w.covers(&labels(&[("rack", "r13")]), at(150)));
        assert!(!w.covers(&labels(&[("site", "r12")]), at(150)));
        assert!(!w.covers(&Labels::new(), at(150)));
    }

    #[test]
    fn ending_a_window_ends_it_now_withdraws_an_upcoming_one_and_refuses_one_over() {
        let w = window("rack=r12", 100, 200);
        assert_eq!(w.end_at(at(150)), Ok(at(150)));
        assert_eq!(
            w.end_at(at(50)),
            Ok(at(100)),
            "withdrawn: it ends as it starts"
        );
        let over = w.end_at(at(200)).expect_err("over");
        assert!(over.contains("is over already"), "{over}");
    }

    #[test]
    fn the_window_ending_last_is_the_one_named() {
        let windows = [
            window("rack=r12", 100, 200),
            window("site=lab-a", 50, 300),
            window("rack=r13", 0, 900),
        ];
        let node = labels(&[("rack", "r12"), ("site", "lab-a")]);
        let held = holding(&windows, &node, at(150)).expect("held");
        assert_eq!(held.label(), "site=lab-a");
        assert!(holding(&windows, &node, at(300)).is_none());
        let why = explain("n1", held);
        assert!(why.contains("n1 is in maintenance window mw-site=lab-a (site=lab-a) until"));
        assert!(why.ends_with("PDU swap"), "{why}");
    }

    #[test]
    fn a_new_window_names_every_bad_field() {
        assert!(check_new("rack=r12", at(100), at(200), "PDU swap", at(0)).is_empty());
        // Started already but not over: fine.
        assert!(check_new("rack=r12", at(0), at(200), "PDU swap", at(100)).is_empty());
        let problems = check_new("rack", at(200), at(100), " ", at(0));
        let fields: Vec<_> = problems.iter().map(|(field, _)| *field).collect();
        assert_eq!(fields, ["label", "ends_at", "reason"], "{problems:?}");
        assert!(problems[0].1.contains("KEY=VALUE"));
        let past = check_new("rack=r12", at(0), at(50), "x", at(100));
        assert!(past[0].1.contains("in the past"), "{past:?}");
        let long = check_new("rack=r12", at(0), at(32 * 86_400), "x", at(0));
        assert!(long[0].1.contains("longer than 31 days"), "{long:?}");
        assert!(parse_label("=r12").is_err());
        assert!(parse_label("rack=").is_err());
        assert_eq!(
            parse_label(" rack = r12 ").expect("ok"),
            ("rack".into(), "r12".into())
        );
    }
}
