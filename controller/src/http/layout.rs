//! The page shell every dashboard page shares (navigation, who is signed in, the stylesheet
//! and script), error pages, and small pieces of markup used on several pages.

use super::session::{CSRF_FIELD, Caller};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The top navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/releases", "Releases"),
    ("/fleet", "Fleet"),
    ("/rollouts", "Rollouts"),
    ("/issues", "Issues"),
    ("/waivers", "Waivers"),
    ("/audit", "Audit"),
];

fn document(title: &str, nav: Option<Markup>, body: Markup, scripts: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Tollgate" }
                link rel="stylesheet" href="/assets/dash.css";
                // An empty icon: the browser asks for none, so no request fails.
                link rel="icon" href="data:,";
                @if scripts { script src="/assets/dash.js" defer {} }
            }
            body {
                header.top {
                    a.brand href="/releases" { "Tollgate" }
                    @if let Some(nav) = nav { (nav) }
                }
                main { (body) }
            }
        }
    }
}

/// A page for a signed-in caller: navigation with `active` marked, who is signed in and a
/// sign-out form.
pub fn page(caller: &Caller, title: &str, active: &str, body: Markup) -> Response {
    let nav = html! {
        nav aria-label="Pages" {
            @for (path, label) in NAV {
                @if *path == active { a href=(path) aria-current="page" { (label) } }
                @else { a href=(path) { (label) } }
            }
        }
        div.who {
            @if matches!(caller.identity, crate::grpc::auth::Identity::Anonymous) {
                span title="No API token is configured: calls from this host are anonymous" { "anonymous (no API token configured)" }
            } @else {
                span { (caller.actor()) " · " (caller.role())
                    @if let Some(customer) = caller.customer() { " of " (customer) } }
            }
            @if !matches!(caller.identity, crate::grpc::auth::Identity::Anonymous) {
                form.inline method="post" action="/signout" {
                    (csrf(caller))
                    button.link type="submit" { "Sign out" }
                }
            }
        }
    };
    let markup = document(title, Some(nav), body, true);
    let cookies: Vec<String> = caller.csrf_cookie().into_iter().collect();
    respond(StatusCode::OK, markup, &cookies)
}

/// A page without navigation (sign-in).
pub fn bare_page(status: StatusCode, title: &str, body: Markup, cookies: &[String]) -> Response {
    respond(status, document(title, None, body, false), cookies)
}

fn respond(status: StatusCode, markup: Markup, cookies: &[String]) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                 frame-ancestors 'none'; form-action 'self'",
            ),
        ],
        markup.into_string(),
    )
        .into_response();
    for cookie in cookies {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// An error page: what went wrong and what to do, with the right status.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        section.card.error {
            h1 { (status.as_u16()) " · " (title) }
            p { (message) }
            p { a href="/releases" { "Releases" } " · " a href="/fleet" { "Fleet" } }
        }
    };
    respond(status, document(title, None, body, false), &[])
}

/// What an action's form posts when it has no field of its own: the CSRF token.
#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    /// The hidden field [`csrf`] writes.
    #[serde(default)]
    pub csrf: String,
}

/// The hidden CSRF field every form carries.
pub fn csrf(caller: &Caller) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(caller.csrf); }
}

/// A verdict, outcome or state as a coloured badge (with its word, so colour is never the only
/// sign).
pub fn badge(word: &str) -> Markup {
    let class = match word {
        "passed" | "good" | "ready" | "finished" | "ok" | "in force" | "intact" | "done"
        | "completed" => "ok",
        "failed" | "bad" | "error" | "lost" | "unreachable" | "broken" | "halted"
        | "rollback failed" | "drifted" => "bad",
        risk if risk.starts_with("AT RISK") => "bad",
        "waiting" | "running" | "assigned" | "in procedure" | "soaking" | "judging"
        | "rolling back" | "paused" | "interval" | "pending" | "suspect" | "busy" | "draining"
        | "cordoned" | "maintenance" | "waived" => "warn",
        _ => "neutral",
    };
    html! { span class={ "badge " (class) } { (word) } }
}

/// The simulated-GPU marker, wherever simulated GPUs show.
pub fn simulated() -> Markup {
    html! { span.badge.sim title="The GPU readings of this node are made up (simulated GPUs); the processes, scheduling and gates are real." { "simulated GPUs" } }
}

/// A time as people read it here: UTC, to the second.
pub fn time(at: Option<&prost_types::Timestamp>) -> Markup {
    match at.and_then(tollgate_wire::time::timestamp_from_proto) {
        Some(at) => {
            let text = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(at.to_rfc3339()) { (text) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// A duration in milliseconds, short.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        let seconds = ms / 1000;
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

/// Links to the signed report of `release` at `milestone` in each format.
/// An empty `milestone` means the release's current one.
pub fn report_links(release: &str, milestone: &str) -> Markup {
    let milestone = if milestone.is_empty() {
        super::reports::CURRENT
    } else {
        milestone
    };
    let base = format!(
        "/reports/{}/{}",
        super::session::encode(release),
        super::session::encode(milestone)
    );
    html! {
        span.reports {
            "Signed report: "
            a href={ (base) "?format=html" } { "HTML" } " · "
            a href={ (base) "?format=markdown" } { "Markdown" } " · "
            a href={ (base) "?format=json" } { "JSON" }
        }
    }
}

/// Text already escaped (an inline SVG built by `charts.rs`).
pub fn raw(text: String) -> Markup {
    PreEscaped(text)
}
