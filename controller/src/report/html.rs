//! The HTML rendering: one self-contained page (inline CSS and SVG; no script, font, image or
//! any other fetch) that reads on screen and prints to PDF. The summary and the gate decision
//! come first; each node's detail sits in a collapsed `<details>`, so a report of a thousand
//! nodes opens quickly, and print styles expand everything.
//!
//! Every piece of untrusted text (node names, labels, messages, log tails, even versions) is
//! written through [`Html`], which escapes it; only this module's own literals are markup.

use super::layout::{Layout, NamedSection};
use super::model::{
    AttemptView, CHARTED_FIELDS, FieldView, InventoryView, JobView, LimitView, NodeRow, NodeView,
    PlanView, Report, RuleView, SHOWN_OK_EVIDENCE,
};
use super::text::{self, Fixed, Html, Stat, put};
use std::collections::BTreeSet;
use tollgate_domain::report_signature as signature;
use tollgate_domain::telemetry::{Field, TelemetrySeries};

/// Simulated node names listed in the banner; the node table marks every one.
const BANNER_NODE_NAMES: usize = 10;

const CSS: &str = r#"
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--line:#d0d7de;--muted:#57606a;--head:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;margin:0 auto;max-width:1280px;padding:16px 24px}
h1{font-size:1.6em;margin:.2em 0 .4em}h2{font-size:1.3em;border-bottom:1px solid var(--line);padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.1em;margin:1.2em 0 .4em}h4{margin:1em 0 .3em}h5{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:12em}
tr.bad td,td.bad{background:#ffebe9}
.gpus{display:flex;flex-wrap:wrap;gap:0 16px;align-items:flex-start}
table.tm caption{text-align:left;font-weight:600;padding:2px 0}
table.tm td{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
table.tm td:nth-child(-n+2),table.tm td.lm{text-align:left}
table.tm td.lm{white-space:normal}
code,.mono,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12px}
code{word-break:break-all}
pre{background:var(--head);border:1px solid var(--line);padding:8px;white-space:pre-wrap;word-break:break-all;max-height:30em;overflow:auto}
.banner{border:3px solid #bc4c00;background:#fff1e5;color:#6c2400;padding:12px 16px;margin:12px 0;font-size:1.1em}
.banner strong{font-size:1.15em}
.verdict{display:inline-block;color:#fff;font-size:1.6em;font-weight:700;padding:4px 16px;border-radius:4px;margin-right:12px;vertical-align:middle}
.badge{display:inline-block;color:#fff;font-size:11px;font-weight:700;padding:1px 6px;border-radius:3px;white-space:nowrap}
.passed{background:var(--ok)}.failed,.lost{background:var(--bad)}.waiting,.running,.pending,.assigned{background:var(--warn)}
.error{background:#8250df}.waived,.skipped,.cancelled{background:#0969da}.sim{background:#bc4c00}
.lead{font-size:1.1em}
.muted{color:var(--muted)}
.warn{border-left:4px solid var(--warn);background:#fff8c5;padding:6px 12px}
details{margin:.4em 0}summary{cursor:pointer}
details.node{border:1px solid var(--line);border-radius:4px;padding:4px 10px}
details.node>summary{font-weight:600}
details.node[open]>summary{margin-bottom:.5em}
.attempt{border-top:1px dashed var(--line);margin-top:.6em}
.charts{display:flex;flex-wrap:wrap;gap:16px;margin:.3em 0}
svg.chart text{font:10px system-ui,sans-serif;fill:#1f2328}
svg.chart .ct{font-weight:600}
svg.chart .rg{fill:#54aeff}svg.chart .rg.x{fill:var(--bad)}
svg.chart .mn{stroke:#1f2328;stroke-width:2}
svg.chart .lim{stroke:var(--bad);stroke-width:1.5;stroke-dasharray:4 2}
svg.chart .lt{fill:var(--bad)}
svg.chart .ax{stroke:#8c959f}
figure.series{margin:0;max-width:600px}figure.series figcaption{font-size:11px;margin-bottom:2px}figure.series .lt{color:var(--bad)}
svg.series path{fill:none}svg.series .ln{stroke:#0969da;stroke-width:1.5}svg.series .mx{stroke:#54aeff;stroke-width:1}
svg.series .x .ln{stroke:var(--bad)}svg.series .x .mx{stroke:#ff8182}svg.series .x text{fill:var(--bad)}
footer{margin-top:2em;border-top:1px solid var(--line);padding-top:.6em;font-size:12px}
@page{margin:12mm}
@media print{
body{max-width:none;padding:0;font-size:11px}
table{font-size:10px}
.gpus{display:block}
table.tm{width:100%;table-layout:fixed}
table.tm th:first-child{width:26%}table.tm th:nth-child(2){width:8%}
footer{break-inside:avoid}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
table,svg,.banner,.charts{break-inside:avoid}
tr{break-inside:avoid}
thead{display:table-header-group}
h2,h3,h4,h5{break-after:avoid}
details.node{border:none;padding:0;break-before:page}
summary{list-style:none}
summary::-webkit-details-marker{display:none}
pre{max-height:none;overflow:visible}
a{color:inherit;text-decoration:none}
}
"#;

/// Kept apart from the rules above: a browser that does not know `::details-content` drops
/// the whole rule it appears in, and it is what opens collapsed sections when printing.
const CSS_PRINT_EXPAND: &str = "@media print{details::details-content{content-visibility:visible;display:block;height:auto}}\n";

/// The HTML layout.
pub(crate) struct HtmlPage;

impl Layout for HtmlPage {
    fn head(&self, report: &Report, rows: &[NodeRow]) -> Vec<NamedSection> {
        let mut sections = Vec::with_capacity(8 + report.rules.len());
        let mut out = String::with_capacity(64 * 1024);
        put!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"tollgate-controller {}\">\n\
             <title>{}</title>\n<style>{CSS}{CSS_PRINT_EXPAND}</style>\n</head>\n<body>\n",
            Html(&report.controller_version),
            Html(&report.title)
        );
        header(&mut out, report);
        summary(&mut out, report);
        sections.push(("summary".to_owned(), out));
        let mut out = String::new();
        decision(&mut out, report);
        sections.push(("decision".to_owned(), out));
        for rule in &report.rules {
            let mut out = String::new();
            rule_detail(&mut out, rule);
            sections.push((format!("rule {}", rule.rule_id), out));
        }
        let mut out = String::from("</section>\n");
        components(&mut out, report);
        sections.push(("release components".to_owned(), out));
        let mut out = String::new();
        waivers(&mut out, report);
        sections.push(("waivers".to_owned(), out));
        let mut out = String::new();
        plans(&mut out, report);
        sections.push(("plans".to_owned(), out));
        let mut out = String::with_capacity(rows.len() * 512);
        nodes(&mut out, rows);
        sections.push(("nodes".to_owned(), out));
        sections
    }

    fn node(&self, report: &Report, idx: usize, node: &NodeView, out: &mut String) {
        node_detail(out, report, idx, node);
    }

    fn tail(&self, report: &Report) -> Vec<NamedSection> {
        let mut out = String::from("</section>\n");
        events(&mut out, report);
        let mut end = String::new();
        footer(&mut end, report);
        vec![("events".to_owned(), out), ("footer".to_owned(), end)]
    }

    /// The signature shown to the reader, then the signature block as a JSON data block (never
    /// executed: its type is `application/json`, and `<` inside it is escaped so no
    /// `</script>` can end it early).
    fn format(&self) -> signature::Format {
        signature::Format::Html
    }

    fn suffix(&self) -> &'static str {
        "\n</body>\n</html>\n"
    }
}

fn badge(out: &mut String, class_and_text: &str) {
    // Class names come from fixed domain names (verdicts, outcomes, job states), never from
    // input text; they are still escaped so that stays harmless if it ever changes.
    put!(
        out,
        "<span class=\"badge {}\">{}</span>",
        Html(class_and_text),
        Html(&text::label(class_and_text))
    );
}

fn sim_badge(out: &mut String) {
    out.push_str("<span class=\"badge sim\">SIMULATED</span>");
}

fn header(out: &mut String, report: &Report) {
    put!(out, "<header>\n<h1>{}</h1>\n", Html(&report.title));
    if let Some(banner) = report.simulated.banner {
        let (head, rest) = banner.split_once(" — ").unwrap_or((banner, ""));
        put!(
            out,
            "<div class=\"banner\" role=\"alert\"><strong>⚠ {}</strong> — {}.<br>",
            Html(head),
            Html(rest)
        );
        let nodes = &report.simulated.nodes;
        put!(out, "Simulated nodes ({}): ", nodes.len());
        for (idx, name) in nodes.iter().take(BANNER_NODE_NAMES).enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "{}", Html(name));
        }
        if nodes.len() > BANNER_NODE_NAMES {
            put!(
                out,
                " and {} more, each marked SIMULATED below",
                nodes.len() - BANNER_NODE_NAMES
            );
        }
        out.push_str(".</div>\n");
    }
    if let Some(scope) = &report.scope {
        put!(
            out,
            "<div class=\"warn\"><strong>Customer scope: <code>{}={}</code>.</strong> {}</div>\n",
            Html(&scope.label),
            Html(&scope.value),
            Html(&scope.note)
        );
    }
    put!(
        out,
        "<p><span class=\"verdict {}\">{}</span><span class=\"lead\">{}</span></p>\n</header>\n",
        Html(report.decision.verdict),
        Html(&text::label(report.decision.verdict)),
        Html(&report.decision.summary)
    );
}

fn kv(out: &mut String, key: &str, value: impl std::fmt::Display) {
    put!(out, "<tr><th>{key}</th><td>{value}</td></tr>\n");
}

fn summary(out: &mut String, report: &Report) {
    let s = &report.summary;
    out.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<table class=\"kv\">\n");
    kv(out, "Release", Html(&report.release.name));
    kv(out, "Milestone", Html(&report.milestone));
    let r = &s.rules;
    kv(
        out,
        "Rules",
        format_args!(
            "{} passed, {} failed, {} waived, {} waiting, {} error",
            r.passed, r.failed, r.waived, r.waiting, r.error
        ),
    );
    let simulated = if s.n_simulated_nodes > 0 {
        format!(
            " (<span class=\"badge sim\">{} SIMULATED</span>)",
            s.n_simulated_nodes
        )
    } else {
        String::new()
    };
    kv(
        out,
        "Nodes",
        format_args!("{}{simulated}, {} GPUs", s.n_nodes, s.n_gpus),
    );
    kv(
        out,
        "Jobs",
        format_args!("{} ({})", s.n_jobs, counts(s.job_states.iter())),
    );
    kv(
        out,
        "Step attempts",
        format_args!("{} ({})", s.n_attempts, counts(s.attempt_outcomes.iter())),
    );
    kv(out, "GPU events", s.n_events);
    kv(
        out,
        "Decision digest",
        format_args!("<code>{}</code>", Html(&report.decision.digest)),
    );
    kv(
        out,
        "Policy version",
        format_args!("<code>{}</code>", Html(&report.decision.policy_version)),
    );
    kv(out, "Evaluated at", Html(&report.decision.evaluated_at));
    kv(out, "Generated at", Html(&report.generated_at));
    kv(out, "Controller version", Html(&report.controller_version));
    match &report.audit_head {
        Some(head) => kv(
            out,
            "Audit log head",
            format_args!("<code>{}</code>", Html(head)),
        ),
        None => kv(out, "Audit log head", "(none)"),
    }
    out.push_str("</table>\n");
    if !report.warnings.is_empty() {
        out.push_str("<div class=\"warn\"><strong>Warnings</strong><ul>\n");
        for warning in &report.warnings {
            put!(out, "<li>{}</li>\n", Html(warning));
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</section>\n");
}

fn counts<'a>(entries: impl Iterator<Item = (&'a &'static str, &'a usize)>) -> String {
    let parts: Vec<String> = entries.map(|(name, n)| format!("{n} {name}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn decision(out: &mut String, report: &Report) {
    let policy = &report.policy;
    put!(
        out,
        "<section id=\"decision\">\n<h2>Gate decision</h2>\n<p>Gate policy for milestone {}, version <code>{}</code>.",
        Html(&policy.milestone),
        Html(&policy.version)
    );
    if !policy.description.is_empty() {
        put!(out, " {}", Html(&policy.description));
    }
    out.push_str("</p>\n<table>\n<thead><tr><th>Verdict</th><th>Rule</th><th>Kind</th><th>Reason</th></tr></thead>\n<tbody>\n");
    for rule in &report.rules {
        out.push_str("<tr><td>");
        badge(out, rule.verdict);
        put!(
            out,
            "</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            Html(&rule.rule_id),
            Html(&rule.kind),
            Html(&rule.reason)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn rule_detail(out: &mut String, rule: &RuleView) {
    // Open what needs attention; a passed rule's evidence is one click away.
    let open = if rule.verdict == "passed" {
        ""
    } else {
        " open"
    };
    put!(out, "<details class=\"rule\"{open}><summary>");
    badge(out, rule.verdict);
    put!(
        out,
        " <code>{}</code> ({}) — {} evidence item(s), {} not ok</summary>\n<ul>\n",
        Html(&rule.rule_id),
        Html(&rule.kind),
        rule.n_evidence_ok + rule.n_evidence_not_ok,
        rule.n_evidence_not_ok
    );
    if let Some(definition) = &rule.definition {
        put!(out, "<li>Requires: {}</li>\n", Html(definition));
    }
    put!(out, "<li>Reason: {}</li>\n", Html(&rule.reason));
    if !rule.failing_nodes.is_empty() {
        out.push_str("<li>Failing nodes: ");
        for (idx, node) in rule.failing_nodes.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "{}", Html(node));
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
    // The model orders evidence not-ok first.
    let split = rule.n_evidence_not_ok.min(rule.evidence.len());
    let (not_ok, ok) = rule.evidence.split_at(split);
    if !not_ok.is_empty() {
        evidence_table(out, not_ok);
    }
    if !ok.is_empty() {
        put!(
            out,
            "<details><summary>{} ok evidence item(s)</summary>\n",
            ok.len()
        );
        let shown = &ok[..ok.len().min(SHOWN_OK_EVIDENCE)];
        evidence_table(out, shown);
        if shown.len() < ok.len() {
            put!(
                out,
                "<p class=\"muted\">{} more ok item(s) are not shown here; the JSON report lists every item.</p>\n",
                ok.len() - shown.len()
            );
        }
        out.push_str("</details>\n");
    }
    out.push_str("</details>\n");
}

fn evidence_table(out: &mut String, items: &[super::model::EvidenceView]) {
    out.push_str("<table>\n<thead><tr><th>OK</th><th>Node</th><th>Step</th><th>Attempt</th><th>GPU</th><th>Value</th><th>Limit</th><th>Detail</th></tr></thead>\n<tbody>\n");
    for item in items {
        let (class, ok) = if item.ok {
            ("", "ok")
        } else {
            (" class=\"bad\"", "<strong>NOT OK</strong>")
        };
        put!(
            out,
            "<tr{class}><td>{ok}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>\n",
            Html(&item.node),
            Html(item.step.as_deref().unwrap_or("")),
            OptNum(item.attempt),
            OptNum(item.gpu_index),
            item.value.map(text::exact).unwrap_or_default(),
            Html(item.limit.as_deref().unwrap_or("")),
            Html(&item.detail)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// Optional untrusted text in a `<code>` element; nothing when absent.
struct Code<'a>(Option<&'a str>);

impl std::fmt::Display for Code<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(text) if !text.is_empty() => write!(f, "<code>{}</code>", Html(text)),
            _ => Ok(()),
        }
    }
}

/// An optional number; empty when absent.
struct OptNum<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OptNum<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}

fn components(out: &mut String, report: &Report) {
    let release = &report.release;
    out.push_str("<section id=\"release\">\n<h2>Release components</h2>\n");
    if !release.description.is_empty() {
        put!(out, "<p>{}</p>\n", Html(&release.description));
    }
    put!(
        out,
        "<p>Release {} was registered at {}; its current milestone is {}.</p>\n",
        Html(&release.name),
        Html(&release.created_at),
        Html(&release.current_milestone)
    );
    out.push_str("<table>\n<thead><tr><th>Component</th><th>Version</th><th>Artifact</th><th>sha256</th></tr></thead>\n<tbody>\n");
    for c in &release.components {
        // The artifact URI is shown as text, never as a link: the page fetches nothing and a
        // reader copies the address deliberately.
        put!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            Html(&c.name),
            Html(&c.version),
            Code(c.artifact_uri.as_deref()),
            Code(c.sha256.as_deref())
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if !release.promotions.is_empty() {
        out.push_str("<p>Promotions so far:</p>\n<table>\n<thead><tr><th>From</th><th>To</th><th>At</th><th>Decision digest</th></tr></thead>\n<tbody>\n");
        for p in &release.promotions {
            put!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
                Html(&p.from_milestone),
                Html(&p.to_milestone),
                Html(&p.at),
                Html(&p.decision_digest)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</section>\n");
}

fn waivers(out: &mut String, report: &Report) {
    put!(
        out,
        "<section id=\"waivers\">\n<h2>Waivers</h2>\n<p class=\"muted\">{}</p>\n",
        Html(report.waivers.note)
    );
    if !report.waivers.items.is_empty() {
        out.push_str("<table>\n<thead><tr><th>Rule</th><th>In force</th><th>Reason</th><th>Ticket</th><th>Approver</th><th>Expires</th><th>Revoked</th></tr></thead>\n<tbody>\n");
        for waiver in &report.waivers.items {
            put!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                Html(&waiver.rule_id),
                if waiver.in_force { "yes" } else { "no" },
                Html(&waiver.reason),
                Html(&waiver.ticket),
                Html(&waiver.approver),
                Html(&waiver.expires_at),
                Html(waiver.revoked_at.as_deref().unwrap_or_default())
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    let waived: Vec<&RuleView> = report
        .rules
        .iter()
        .filter(|rule| rule.verdict == "waived")
        .collect();
    if !waived.is_empty() {
        out.push_str("<p>Waived rules: ");
        for (idx, rule) in waived.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "<code>{}</code>", Html(&rule.rule_id));
        }
        out.push_str("</p>\n");
    }
    out.push_str("</section>\n");
}

fn plans(out: &mut String, report: &Report) {
    out.push_str("<section id=\"plans\">\n<h2>Plans</h2>\n<table>\n<thead><tr><th>Run</th><th>Plan</th><th>Plan version</th><th>Created at</th><th>Jobs</th></tr></thead>\n<tbody>\n");
    for run in &report.runs {
        let missing = if run.plan_available {
            ""
        } else {
            " <strong>(not in this report)</strong>"
        };
        put!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code>{missing}</td><td>{}</td><td class=\"n\">{}</td></tr>\n",
            Html(&run.run_id),
            Html(&run.plan_name),
            Html(&run.plan_version),
            Html(&run.created_at),
            run.n_jobs
        );
    }
    out.push_str("</tbody>\n</table>\n");
    for plan in &report.plans {
        put!(
            out,
            "<h3>Plan {} <span class=\"muted\">version <code>{}</code></span></h3>\n",
            Html(&plan.name),
            Html(&plan.version)
        );
        if !plan.description.is_empty() {
            put!(out, "<p>{}</p>\n", Html(&plan.description));
        }
        out.push_str("<p>Selector: ");
        if plan.selector.is_empty() {
            out.push_str("every node");
        }
        for (idx, (key, value)) in plan.selector.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "<code>{}={}</code>", Html(key), Html(value));
        }
        match plan.max_nodes {
            Some(n) => put!(out, "; nodes: at most {n}"),
            None => out.push_str("; nodes: every matching node"),
        }
        out.push_str("; runs: ");
        if plan.runs.is_empty() {
            out.push_str("none");
        }
        for (idx, run) in plan.runs.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "{}", Html(run));
        }
        out.push_str(".</p>\n");
        plan_steps(out, plan);
    }
    out.push_str("</section>\n");
}

/// A plan's steps, one row each: what each runs, with its environment and directory.
fn plan_steps(out: &mut String, plan: &PlanView) {
    out.push_str("<table>\n<thead><tr><th>#</th><th>Step</th><th>Kind</th><th>Timeout</th><th>Retries</th><th>Command</th></tr></thead>\n<tbody>\n");
    for step in &plan.steps {
        put!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>",
            step.index,
            Html(&step.name),
            Html(step.kind),
            Html(&step.timeout),
            step.retries
        );
        match (&step.command, &step.components) {
            (Some(argv), _) => {
                put!(out, "<code>{}</code>", Html(&text::shell_join(argv)));
            }
            (None, Some(c)) if c.is_empty() => out.push_str("every component"),
            (None, Some(c)) => put!(out, "components: {}", Html(&c.join(", "))),
            (None, None) => {}
        }
        for (key, value) in &step.env {
            put!(out, "<br>env <code>{}={}</code>", Html(key), Html(value));
        }
        if let Some(workdir) = &step.workdir {
            put!(out, "<br>workdir <code>{}</code>", Html(workdir));
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn nodes(out: &mut String, rows: &[NodeRow]) {
    out.push_str("<section id=\"nodes\">\n<h2>Nodes</h2>\n<p class=\"muted\">Each node's detail below is collapsed; the names in the table link to it. Each attempt's telemetry is a table per GPU: min, mean, max, p99 and last of each field over the attempt (the JSON report also has each summary's sample count), under charts of the step's series.</p>\n<table>\n<thead><tr><th>Node</th><th>GPU source</th><th>Labels</th><th>Driver</th><th>CUDA driver</th><th>GPUs</th><th>Inventory</th><th>Jobs</th><th>Fails rules</th></tr></thead>\n<tbody>\n");
    for (idx, node) in rows.iter().enumerate() {
        let class = if node.failing_rules.is_empty() {
            ""
        } else {
            " class=\"bad\""
        };
        // Anchors are positions, not names: node names are untrusted and need not be valid ids.
        put!(
            out,
            "<tr{class}><td><a href=\"#node-{idx}\">{}</a></td><td>",
            Html(&node.name)
        );
        source(out, node.simulated, node.gpu_source);
        out.push_str("</td><td>");
        labels(out, &node.labels);
        put!(
            out,
            "</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>",
            Html(&node.driver_version),
            Html(&node.cuda_driver_version),
            node.n_gpus,
            node.inventory_source
        );
        for (idx, (plan_name, state)) in node.jobs.iter().enumerate() {
            if idx > 0 {
                out.push(' ');
            }
            put!(out, "{} ", Html(plan_name));
            badge(out, state);
        }
        out.push_str("</td><td>");
        for (idx, rule) in node.failing_rules.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "<code>{}</code>", Html(rule));
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn source(out: &mut String, simulated: bool, gpu_source: &str) {
    if simulated {
        sim_badge(out);
    } else {
        out.push_str(gpu_source);
    }
}

fn labels(out: &mut String, labels: &std::collections::BTreeMap<String, String>) {
    for (idx, (key, value)) in labels.iter().enumerate() {
        if idx > 0 {
            out.push_str(", ");
        }
        put!(out, "{}={}", Html(key), Html(value));
    }
}

/// A node's collapsible detail: its summary line, what is known of it, its GPUs and each
/// job's attempts.
fn node_detail(out: &mut String, report: &Report, idx: usize, node: &NodeView) {
    node_summary(out, idx, node);
    node_facts(out, node);
    gpu_table(out, &node.inventory);
    for job in &node.jobs {
        job_detail(out, report, job);
    }
    out.push_str("</details>\n");
}

/// The opening of a node's detail and its summary line: name, badges, attempts counted and
/// the rules it fails.
fn node_summary(out: &mut String, idx: usize, node: &NodeView) {
    put!(
        out,
        "<details class=\"node\" id=\"node-{idx}\"><summary>{} ",
        Html(&node.name)
    );
    if node.simulated {
        sim_badge(out);
        out.push(' ');
    }
    for job in &node.jobs {
        badge(out, job.state);
        out.push(' ');
    }
    let n_attempts: usize = node.jobs.iter().map(|job| job.attempts.len()).sum();
    let n_not_passed = node
        .jobs
        .iter()
        .flat_map(|job| &job.attempts)
        .filter(|a| a.outcome != "passed")
        .count();
    put!(
        out,
        "<span class=\"muted\">{n_attempts} attempt(s), {n_not_passed} not passed"
    );
    if !node.failing_rules.is_empty() {
        out.push_str("; fails ");
        for (idx, rule) in node.failing_rules.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "{}", Html(rule));
        }
    }
    out.push_str("</span></summary>\n");
}

/// The list of what is known of a node: GPU source, labels, state, inventory.
fn node_facts(out: &mut String, node: &NodeView) {
    out.push_str("<ul>\n<li>GPU source: ");
    source(out, node.simulated, node.gpu_source);
    out.push_str("</li>\n");
    if !node.labels.is_empty() {
        out.push_str("<li>Labels: ");
        labels(out, &node.labels);
        out.push_str("</li>\n");
    }
    if let (Some(state), Some(health)) = (node.node_state, node.health) {
        put!(out, "<li>State now: {state}, health: {health}</li>\n");
    }
    let inventory = &node.inventory;
    put!(
        out,
        "<li>Driver {}, CUDA driver {}, NVML {}</li>\n",
        Html(&inventory.driver_version),
        Html(&inventory.cuda_driver_version),
        Html(&inventory.nvml_version)
    );
    if !inventory.hostname.is_empty() {
        put!(out, "<li>Hostname {}</li>\n", Html(&inventory.hostname));
    }
    match (&inventory.observed_step, inventory.observed_attempt) {
        (Some(step), Some(attempt)) => put!(
            out,
            "<li>Inventory observed at the start of {} attempt {attempt}</li>\n",
            Html(step)
        ),
        _ if inventory.source == "registered" => out.push_str(
            "<li><strong>Inventory as registered</strong> (not observed during a step)</li>\n",
        ),
        _ => out.push_str("<li><strong>No inventory available</strong></li>\n"),
    }
    for note in &inventory.notes {
        put!(out, "<li>Note: {}</li>\n", Html(note));
    }
    if !inventory.components.is_empty() {
        out.push_str("<li>Components reported: ");
        for (idx, (key, value)) in inventory.components.iter().enumerate() {
            if idx > 0 {
                out.push_str(", ");
            }
            put!(out, "{}={}", Html(key), Html(value));
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
}

/// The node's GPUs, one row each.
fn gpu_table(out: &mut String, inventory: &InventoryView) {
    if !inventory.gpus.is_empty() {
        out.push_str("<table>\n<thead><tr><th>GPU</th><th>Name</th><th>UUID</th><th>Serial</th><th>PCI bus id</th><th>VBIOS</th></tr></thead>\n<tbody>\n");
        for gpu in &inventory.gpus {
            put!(
                out,
                "<tr><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
                gpu.index,
                Html(&gpu.name),
                Html(&gpu.uuid),
                Html(gpu.serial.as_deref().unwrap_or("")),
                Html(&gpu.pci_bus_id),
                Html(&gpu.vbios_version)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
}

/// One job of a node: its heading, its attempts and each attempt's detail.
fn job_detail(out: &mut String, report: &Report, job: &JobView) {
    put!(
        out,
        "<h4>Job {} — plan {}, run {} ",
        Html(&job.job_id),
        Html(&job.plan_name),
        Html(&job.run_id)
    );
    badge(out, job.state);
    out.push_str("</h4>\n");
    if job.attempts.is_empty() {
        out.push_str("<p>No step results.</p>\n");
        return;
    }
    attempts_table(out, &job.attempts);
    for attempt in &job.attempts {
        attempt_detail(out, report, attempt);
    }
}

fn attempts_table(out: &mut String, attempts: &[AttemptView]) {
    out.push_str("<table>\n<thead><tr><th>Step</th><th>Attempt</th><th>Outcome</th><th>Started</th><th>Duration</th><th>Exit</th><th>Message</th></tr></thead>\n<tbody>\n");
    for a in attempts {
        let retried = if a.final_attempt { "" } else { " (retried)" };
        put!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}{retried}</td><td>",
            Html(&a.step_name),
            a.attempt
        );
        badge(out, a.outcome);
        put!(
            out,
            "</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
            Html(&a.started_at),
            text::duration_ms(a.duration_ms),
            OptNum(a.exit_code),
            Html(&a.message)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn attempt_detail(out: &mut String, report: &Report, a: &AttemptView) {
    let has_detail = !a.measurements.is_empty()
        || !a.sub_results.is_empty()
        || !a.telemetry.is_empty()
        || !a.events.is_empty()
        || !a.log_tail.is_empty();
    if !has_detail {
        return;
    }
    put!(
        out,
        "<div class=\"attempt\"><h5>{} attempt {} ",
        Html(&a.step_name),
        a.attempt
    );
    badge(out, a.outcome);
    out.push_str("</h5>\n");

    attempt_charts(out, report, a);
    attempt_tests(out, a);
    attempt_measurements(out, a);
    if !a.telemetry.is_empty() {
        telemetry_table(out, report, a);
        samples_missed(out, a);
    }
    attempt_events(out, a);
    attempt_log(out, a);
    out.push_str("</div>\n");
}

/// The charted telemetry fields of an attempt, one chart per field: the step's series as
/// small multiples (a panel per GPU) when the agent sent them, otherwise each GPU's range.
fn attempt_charts(out: &mut String, report: &Report, a: &AttemptView) {
    let mut charts = String::new();
    for field in CHARTED_FIELDS {
        let limits: Vec<&LimitView> = report.telemetry_limits(field, &a.step_name).collect();
        let series: Vec<&TelemetrySeries> = a.series.iter().filter(|s| s.field == field).collect();
        if !series.is_empty() {
            series_chart(&mut charts, field, a, &series, &limits);
            continue;
        }
        let rows: Vec<(u32, &FieldView)> = a
            .telemetry
            .iter()
            .filter_map(|gpu| {
                gpu.fields
                    .iter()
                    .find(|f| f.field == field.name())
                    .map(|f| (gpu.gpu_index, f))
            })
            .collect();
        if !rows.is_empty() {
            chart(&mut charts, field, a, &rows, &limits);
        }
    }
    if !charts.is_empty() {
        put!(out, "<div class=\"charts\">{charts}</div>\n");
    }
}

/// The attempt's tests, failing ones first, and how many passing ones are not listed.
fn attempt_tests(out: &mut String, a: &AttemptView) {
    if !a.sub_results.is_empty() {
        out.push_str("<table>\n<thead><tr><th>Test</th><th>Suite</th><th>Outcome</th><th>Message</th></tr></thead>\n<tbody>\n");
        for sub in &a.sub_results {
            let class = if sub.failing { " class=\"bad\"" } else { "" };
            put!(
                out,
                "<tr{class}><td>{}</td><td>{}</td><td>",
                Html(&sub.label()),
                Html(&sub.suite)
            );
            badge(out, sub.outcome);
            put!(out, "</td><td>{}</td></tr>\n", Html(&sub.message));
        }
        out.push_str("</tbody>\n</table>\n");
    }
    if a.sub_results_not_listed > 0 {
        put!(
            out,
            "<p class=\"muted\">{} passing or skipped test(s) not listed</p>\n",
            a.sub_results_not_listed
        );
    }
}

/// The attempt's measurements with the limits they were checked against.
fn attempt_measurements(out: &mut String, a: &AttemptView) {
    if !a.measurements.is_empty() {
        out.push_str("<table>\n<thead><tr><th>Measurement</th><th>Value</th><th>Unit</th><th>Limit</th></tr></thead>\n<tbody>\n");
        for m in &a.measurements {
            let bad = m.checks.iter().any(|c| !c.ok);
            let class = if bad { " class=\"bad\"" } else { "" };
            put!(
                out,
                "<tr{class}><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>",
                Html(&m.name),
                text::exact(m.value),
                Html(m.unit.as_deref().unwrap_or(""))
            );
            for (idx, c) in m.checks.iter().enumerate() {
                if idx > 0 {
                    out.push_str("<br>");
                }
                let ok = if c.ok {
                    "ok"
                } else {
                    "<strong>NOT OK</strong>"
                };
                put!(
                    out,
                    "{} <code>{}</code> {ok}",
                    Html(&c.condition),
                    Html(&c.rule_id)
                );
            }
            out.push_str("</td></tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
    }
}

/// The GPUs that missed sampling rounds during the attempt, if any did.
fn samples_missed(out: &mut String, a: &AttemptView) {
    let missed: Vec<String> = a
        .telemetry
        .iter()
        .filter(|gpu| gpu.samples_missed > 0)
        .map(|gpu| format!("GPU {}: {}", gpu.gpu_index, gpu.samples_missed))
        .collect();
    if !missed.is_empty() {
        put!(
            out,
            "<p class=\"muted\">Sampling rounds missed: {}</p>\n",
            missed.join(", ")
        );
    }
}

/// GPU events (XIDs and the like) during the attempt.
fn attempt_events(out: &mut String, a: &AttemptView) {
    if !a.events.is_empty() {
        out.push_str("<table>\n<thead><tr><th>Time</th><th>GPU</th><th>Kind</th><th>Code</th><th>Detail</th></tr></thead>\n<tbody>\n");
        for e in &a.events {
            put!(
                out,
                "<tr class=\"bad\"><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
                Html(&e.at),
                e.gpu_index,
                e.kind,
                e.code,
                Html(&e.detail)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
}

/// The attempt's log tail, open when the attempt did not pass.
fn attempt_log(out: &mut String, a: &AttemptView) {
    if !a.log_tail.is_empty() {
        // Open when the attempt did not pass: that is when the log matters.
        let open = if a.outcome == "passed" { "" } else { " open" };
        put!(
            out,
            "<details{open}><summary>Log tail</summary><pre>{}</pre></details>\n",
            Html(&a.log_tail)
        );
    }
}

/// One table per GPU, a row per field: `min`, `mean`, `max`, `p99` and `last` in their own
/// columns, with the limit each was checked against. Narrow enough for an A4 or Letter page
/// (a row per GPU and a column per field was twenty columns wide, and printing cut all but
/// the first few); on screen the tables sit side by side.
fn telemetry_table(out: &mut String, report: &Report, a: &AttemptView) {
    let columns: BTreeSet<Field> = a
        .telemetry
        .iter()
        .flat_map(|gpu| gpu.fields.iter().map(|f| f.kind))
        .collect();
    // The limit text of every field that has one, written once per field.
    let mut limits: Vec<(Field, String)> = Vec::new();
    for field in &columns {
        let mut text = String::new();
        for limit in report.telemetry_limits(*field, &a.step_name) {
            if !text.is_empty() {
                text.push_str("<br>");
            }
            put!(text, "{} {}", limit.aggregate, Html(&limit.condition));
        }
        if !text.is_empty() {
            limits.push((*field, text));
        }
    }
    let limit_of = |field: Field| {
        limits
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("", |(_, text)| text.as_str())
    };
    out.push_str("<div class=\"gpus\">\n");
    for gpu in &a.telemetry {
        put!(
            out,
            "<table class=\"tm\">\n<caption>GPU {} <code>{}</code></caption>\n<thead><tr><th>Field</th><th>Unit</th><th>min</th><th>mean</th><th>max</th><th>p99</th><th>last</th>",
            gpu.gpu_index,
            Html(&gpu.gpu_uuid)
        );
        if !limits.is_empty() {
            out.push_str("<th>Limit</th>");
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for f in &gpu.fields {
            let bad = f.checks.iter().any(|c| !c.ok);
            put!(
                out,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                if bad { " class=\"bad\"" } else { "" },
                f.field,
                f.unit,
                Stat(f.min),
                Stat(f.mean),
                Stat(f.max),
                Stat(f.p99),
                Stat(f.last)
            );
            if !limits.is_empty() {
                out.push_str("<td class=\"lm\">");
                out.push_str(limit_of(f.kind));
                for c in f.checks.iter().filter(|c| !c.ok) {
                    put!(
                        out,
                        " <strong>NOT OK: {} {}</strong>",
                        c.aggregate,
                        Stat(c.value)
                    );
                }
                out.push_str("</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</div>\n");
}

/// Chart geometry, in SVG user units.
const CHART_WIDTH: f64 = 320.0;
const CHART_LEFT: f64 = 46.0;
const CHART_RIGHT: f64 = 12.0;
const CHART_TOP: f64 = 30.0;
const CHART_ROW: f64 = 14.0;
const CHART_BOTTOM: f64 = 16.0;

/// A per-GPU range chart of one field over one attempt: a bar from min to max, a tick at the
/// mean, and a dashed line at each applicable gate limit; drawn when the attempt has no
/// series (results from agents that sent none): the spread each GPU showed and where the limit is.
fn chart(
    out: &mut String,
    field: Field,
    attempt: &AttemptView,
    rows: &[(u32, &FieldView)],
    limits: &[&LimitView],
) {
    let Some((lo, hi)) = chart_range(rows, limits) else {
        return;
    };
    let plot = CHART_WIDTH - CHART_LEFT - CHART_RIGHT;
    let x = |value: f64| CHART_LEFT + (value - lo) / (hi - lo) * plot;
    let n_rows = rows.len() as f64;
    let bottom = CHART_TOP + n_rows * CHART_ROW;
    let height = bottom + CHART_BOTTOM;
    let unit = field.unit();
    put!(
        out,
        "<svg class=\"chart\" width=\"{CHART_WIDTH}\" height=\"{height}\" viewBox=\"0 0 {CHART_WIDTH} {height}\" role=\"img\" aria-label=\"{field} per GPU during {} attempt {}\">",
        Html(&attempt.step_name),
        attempt.attempt
    );
    put!(
        out,
        "<text class=\"ct\" x=\"0\" y=\"11\">{field} ({unit}): min–max, mean</text>"
    );
    // Bars and mean ticks go into one path each (two for bars: within and beyond a limit):
    // a thousand-node page holds twenty thousand of these charts.
    let (mut bars, mut bad_bars, mut means) = (String::new(), String::new(), String::new());
    for (idx, (gpu_index, f)) in rows.iter().enumerate() {
        let y = CHART_TOP + idx as f64 * CHART_ROW;
        put!(
            out,
            "<text x=\"0\" y=\"{}\">GPU {gpu_index}</text>",
            Fixed(y + 10.0, 0)
        );
        if !finite(f) {
            continue;
        }
        let (x0, x1) = (x(f.min), x(f.max));
        let target = if f.checks.iter().any(|c| !c.ok) {
            &mut bad_bars
        } else {
            &mut bars
        };
        let width = (x1 - x0).max(1.5);
        let (x0, width) = (Fixed(x0, 1), Fixed(width, 1));
        put!(target, "M{x0} {}h{width}v8h-{width}z", Fixed(y + 3.0, 0));
        put!(means, "M{} {}v12", Fixed(x(f.mean), 1), Fixed(y + 1.0, 0));
    }
    for (class, d) in [("rg", &bars), ("rg x", &bad_bars), ("mn", &means)] {
        if !d.is_empty() {
            put!(out, "<path class=\"{class}\" d=\"{d}\"/>");
        }
    }
    limit_lines(out, limits, &x, bottom);
    put!(
        out,
        "<path class=\"ax\" d=\"M{CHART_LEFT} {bottom:.1}H{:.1}\"/><text x=\"{CHART_LEFT}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} {unit}</text></svg>",
        CHART_WIDTH - CHART_RIGHT,
        height - 3.0,
        text::stat(lo),
        CHART_WIDTH - CHART_RIGHT,
        height - 3.0,
        text::stat(hi)
    );
}

/// Small-multiple panel geometry, in SVG user units.
const PANEL_WIDTH: f64 = 150.0;
const PANEL_HEIGHT: f64 = 62.0;
const PANEL_TOP: f64 = 13.0;
const PANEL_PLOT_HEIGHT: f64 = 40.0;
const PANELS_PER_ROW: usize = 4;
/// Most points a line in a panel has: a fleet report holds thousands of these charts.
const PANEL_POINTS: usize = 48;

/// One field's series over an attempt, a panel per GPU on a shared scale: the bucket means
/// as a line, the bucket maxima as a lighter line above it, each gate limit dashed. A GPU
/// whose summary broke a limit is drawn in the failing colour.
fn series_chart(
    out: &mut String,
    field: Field,
    attempt: &AttemptView,
    series: &[&TelemetrySeries],
    limits: &[&LimitView],
) {
    let lines: Vec<(u32, Vec<Point>)> = series
        .iter()
        .map(|s| (s.gpu_index, coarsen(s, PANEL_POINTS)))
        .collect();
    let (mut lo, mut hi) = (0.0f64, f64::NEG_INFINITY);
    let mut end_ms = 0u64;
    for (_, points) in &lines {
        for p in points {
            lo = lo.min(p.mean).min(p.max);
            hi = hi.max(p.max).max(p.mean);
            end_ms = end_ms.max(p.end_ms);
        }
    }
    for limit in limits.iter().filter(|l| l.threshold.is_finite()) {
        lo = lo.min(limit.threshold);
        hi = hi.max(limit.threshold);
    }
    if !hi.is_finite() || end_ms == 0 {
        return;
    }
    let hi = round_up(hi + ((hi - lo) * 0.02).max(0.5));
    let n_rows = lines.len().div_ceil(PANELS_PER_ROW);
    let n_cols = lines.len().min(PANELS_PER_ROW);
    let width = n_cols as f64 * PANEL_WIDTH;
    let height = n_rows as f64 * PANEL_HEIGHT;
    let unit = field.unit();
    // The title is HTML, so it wraps however narrow the page.
    put!(
        out,
        "<figure class=\"series\"><figcaption><b>{field} ({unit})</b> of each GPU over {} (scale {} to {} {unit}): mean, max (light)",
        text::duration_ms(attempt.duration_ms),
        text::stat(lo),
        text::stat(hi)
    );
    for limit in limits.iter().filter(|l| l.threshold.is_finite()) {
        put!(
            out,
            "; <span class=\"lt\">limit {} {} (dashed)</span>",
            limit.aggregate,
            Html(&limit.condition)
        );
    }
    put!(
        out,
        "</figcaption><svg class=\"chart series\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{field} of each GPU over {} attempt {}\">",
        Html(&attempt.step_name),
        attempt.attempt
    );
    let plot_width = PANEL_WIDTH - 10.0;
    let x = |ms: u64| ms as f64 / end_ms as f64 * plot_width;
    let y = |value: f64| PANEL_TOP + (hi - value) / (hi - lo) * PANEL_PLOT_HEIGHT;
    for (idx, (gpu_index, points)) in lines.iter().enumerate() {
        let (col, row) = (idx % PANELS_PER_ROW, idx / PANELS_PER_ROW);
        let bad = attempt
            .telemetry
            .iter()
            .find(|gpu| gpu.gpu_index == *gpu_index)
            .and_then(|gpu| gpu.fields.iter().find(|f| f.kind == field))
            .is_some_and(|f| f.checks.iter().any(|c| !c.ok));
        let peak = points
            .iter()
            .map(|p| p.max)
            .fold(f64::NEG_INFINITY, f64::max);
        put!(
            out,
            "<g transform=\"translate({} {})\"{}><text x=\"0\" y=\"10\">GPU {gpu_index}, max {} {unit}</text>",
            Fixed(col as f64 * PANEL_WIDTH, 0),
            Fixed(row as f64 * PANEL_HEIGHT, 0),
            if bad { " class=\"x\"" } else { "" },
            text::stat(peak)
        );
        put!(
            out,
            "<path class=\"ax\" d=\"M0 {}H{}\"/>",
            Fixed(PANEL_TOP + PANEL_PLOT_HEIGHT, 0),
            Fixed(plot_width, 0)
        );
        for limit in limits.iter().filter(|l| l.threshold.is_finite()) {
            put!(
                out,
                "<path class=\"lim\" d=\"M0 {}H{}\"/>",
                Fixed(y(limit.threshold), 1),
                Fixed(plot_width, 0)
            );
        }
        for (class, value) in [("mx", Point::max as fn(&Point) -> f64), ("ln", Point::mean)] {
            let mut d = String::new();
            let mut pen_down = false;
            for p in points {
                let v = value(p);
                if !v.is_finite() {
                    pen_down = false;
                    continue;
                }
                let command = if pen_down { 'L' } else { 'M' };
                put!(d, "{command}{} {}", Fixed(x(p.mid_ms), 0), Fixed(y(v), 1));
                pen_down = true;
            }
            if !d.is_empty() {
                put!(out, "<path class=\"{class}\" d=\"{d}\"/>");
            }
        }
        out.push_str("</g>");
    }
    out.push_str("</svg></figure>");
}

/// A stretch of a series as a panel draws it.
#[derive(Clone, Copy, Debug)]
struct Point {
    /// Middle and end of the stretch, milliseconds after the attempt started.
    mid_ms: u64,
    end_ms: u64,
    mean: f64,
    max: f64,
}

impl Point {
    fn mean(&self) -> f64 {
        self.mean
    }
    fn max(&self) -> f64 {
        self.max
    }
}

/// A series' points merged into at most `most` stretches of neighbouring buckets: the mean weighted
/// by samples, the largest maximum.
fn coarsen(series: &TelemetrySeries, most: usize) -> Vec<Point> {
    let points = &series.points;
    if points.is_empty() {
        return Vec::new();
    }
    let width = series.bucket_ms.max(1);
    let per = points.len().div_ceil(most.max(1));
    points
        .chunks(per)
        .map(|chunk| {
            let (mut sum, mut n, mut max) = (0.0, 0u64, f64::NEG_INFINITY);
            for p in chunk.iter().filter(|p| p.mean.is_finite()) {
                sum += p.mean * f64::from(p.samples.max(1));
                n += u64::from(p.samples.max(1));
                max = max.max(p.max);
            }
            let start = chunk[0].offset_ms;
            let end = chunk[chunk.len() - 1].offset_ms + width;
            Point {
                mid_ms: start + (end - start) / 2,
                end_ms: end,
                mean: if n == 0 { f64::NAN } else { sum / n as f64 },
                max: if max.is_finite() { max } else { f64::NAN },
            }
        })
        .collect()
}

/// Whether a field's statistics can be drawn.
fn finite(f: &FieldView) -> bool {
    f.min.is_finite() && f.max.is_finite() && f.mean.is_finite()
}

/// The value range a chart spans: every drawable value and limit, from zero for
/// non-negative fields so bar lengths compare honestly, to a round number a little above the
/// largest. `None` when nothing can be drawn.
fn chart_range(rows: &[(u32, &FieldView)], limits: &[&LimitView]) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, f) in rows.iter().filter(|(_, f)| finite(f)) {
        lo = lo.min(f.min);
        hi = hi.max(f.max);
    }
    for limit in limits.iter().filter(|l| l.threshold.is_finite()) {
        lo = lo.min(limit.threshold);
        hi = hi.max(limit.threshold);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    lo = lo.min(0.0);
    hi = round_up(hi + ((hi - lo) * 0.02).max(0.5));
    Some((lo, hi))
}

/// A chart's gate limits: a vertical line each, labelled above the plot.
fn limit_lines(out: &mut String, limits: &[&LimitView], x: &dyn Fn(f64) -> f64, bottom: f64) {
    for limit in limits.iter().filter(|l| l.threshold.is_finite()) {
        let xl = x(limit.threshold);
        let anchor = if xl > CHART_WIDTH - 60.0 {
            "end"
        } else {
            "middle"
        };
        put!(
            out,
            "<path class=\"lim\" d=\"M{xl:.1} {:.1}V{bottom:.1}\"><title>gate limit: {} {} (rule {})</title></path><text class=\"lt\" x=\"{xl:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{} {}</text>",
            CHART_TOP - 4.0,
            limit.aggregate,
            Html(&limit.condition),
            Html(&limit.rule_id),
            CHART_TOP - 7.0,
            limit.aggregate,
            Html(&limit.condition)
        );
    }
}

/// `value` rounded up to a multiple of a fifth of its order of magnitude (94, 120, 740).
fn round_up(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return value;
    }
    let step = 10f64.powf(value.log10().floor()) / 5.0;
    (value / step).ceil() * step
}

fn events(out: &mut String, report: &Report) {
    out.push_str("<section id=\"events\">\n<h2>GPU events</h2>\n");
    if report.events.is_empty() {
        out.push_str(
            "<p>No XID, uncorrected ECC or GPU-lost event was seen during any step.</p>\n</section>\n",
        );
        return;
    }
    out.push_str("<table>\n<thead><tr><th>Time</th><th>Node</th><th>Step</th><th>Attempt</th><th>GPU</th><th>Kind</th><th>Code</th><th>Detail</th></tr></thead>\n<tbody>\n");
    for e in &report.events {
        put!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
            Html(&e.at),
            Html(&e.node),
            Html(&e.step_name),
            e.attempt,
            e.gpu_index,
            e.kind,
            e.code,
            Html(&e.detail)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn footer(out: &mut String, report: &Report) {
    put!(
        out,
        "<footer>Decision digest <code>{}</code> under policy version <code>{}</code>, evaluated at {}. Report generated at {} by tollgate-controller {}; schema {}.",
        Html(&report.decision.digest),
        Html(&report.decision.policy_version),
        Html(&report.decision.evaluated_at),
        Html(&report.generated_at),
        Html(&report.controller_version),
        report.schema
    );
    if let Some(banner) = report.simulated.banner {
        put!(out, "<p><strong>{}.</strong></p>", Html(banner));
    }
    out.push_str("</footer>\n");
}

#[cfg(test)]
mod tests {
    use super::round_up;

    #[test]
    fn chart_tops_are_round_numbers() {
        assert_eq!(round_up(97.41), 98.0);
        assert_eq!(round_up(714.0), 720.0);
        assert_eq!(round_up(101.0), 120.0);
        assert_eq!(round_up(0.0), 0.0);
    }
}
