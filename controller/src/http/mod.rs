//! The web dashboard: server-rendered pages (maud), a little script for live updates, served
//! on its own listener (`--http-listen`) by the controller itself. Every page works without
//! script; the run page's grid follows the run over server-sent events when script runs.
//!
//! **Boundary:** the dashboard decides nothing and writes no SQL. It reads through the gRPC
//! handlers in-process ([`session::Caller::rpc`]), after the same authorization check the
//! interceptor makes (`grpc::auth::authorize` over `grpc/authz.rs`'s table), so a role sees and
//! may do here exactly what it may over gRPC, and a customer token is scoped by the same
//! handler code. Only what gRPC does not answer (a job's stored telemetry series) is read from
//! the store, after the node was checked through `GetNode`.
//!
//! One file per page or area: `releases.rs`, `runs.rs` (with the event stream), `fleet.rs`,
//! `nodes.rs`, `rollouts.rs`, `waivers.rs`, `audit.rs`, `reports.rs` (signed report downloads); `session.rs`
//! signs in and checks every POST (CSRF token, `Origin`); `layout.rs` is the page shell and
//! `charts.rs` draws inline SVG. `metrics.rs` answers `GET /metrics` (Prometheus text, no
//! sign-in) on the same listener.

pub mod audit;
pub mod charts;
pub mod fleet;
pub mod issues;
pub mod layout;
pub mod metrics;
pub mod nodes;
pub mod releases;
pub mod reports;
pub mod rollouts;
pub mod runs;
pub mod session;
pub mod waivers;

use crate::listener::{Conn, Transport};
use crate::shared::Shared;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_stream::StreamExt as _;

/// Every dashboard route, with its state applied. `/metrics` (no sign-in) merges in here too.
pub fn router(shared: Arc<Shared>) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/releases") }))
        .route("/signin", get(session::signin_page).post(session::signin))
        .route("/signout", post(session::signout))
        .route("/releases", get(releases::list))
        .route("/releases/{name}", get(releases::show))
        .route("/releases/{name}/promote", post(releases::promote))
        .route("/releases/{name}/waive", post(releases::waive))
        .route("/issues", get(issues::list))
        .route("/issues/{id}", get(issues::show))
        .route("/rollouts", get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::show))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/events", get(runs::events))
        .route("/fleet", get(fleet::show))
        .route("/nodes/{name}", get(nodes::show))
        .route("/nodes/{name}/cordon", post(nodes::cordon))
        .route("/waivers", get(waivers::list))
        .route("/waivers/{id}/revoke", post(waivers::revoke))
        .route("/audit", get(audit::show))
        .route("/reports/{release}/{milestone}", get(reports::download))
        .route("/assets/dash.css", get(css))
        .route("/assets/dash.js", get(js))
        .fallback(not_found)
        .with_state(shared.clone());
    // `/metrics` needs no sign-in: merged beside the pages, not behind them.
    pages.merge(metrics::routes(shared))
}

const CSS: &str = include_str!("assets/dash.css");
const JS: &str = include_str!("assets/dash.js");

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    layout::error_page(
        StatusCode::NOT_FOUND,
        "Page not found",
        &format!(
            "There is no dashboard page at {}. Start from the releases or the fleet.",
            uri.path()
        ),
    )
}

/// The dashboard's address, in the client's words: what `listener::Peer` says of the
/// connection (`None` when it could not be read).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<SocketAddr>);

/// Finished connections (TLS done, under the connection caps) from `listener::incoming`, as
/// axum's listener.
struct Connections {
    conns: tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>,
    local: SocketAddr,
}

impl axum::serve::Listener for Connections {
    type Io = Conn;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tonic::transport::server::Connected as _;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let remote = conn.connect_info().remote;
                    return (conn, ClientAddr(remote));
                }
                Some(Err(error)) => tracing::debug!(%error, "dashboard connection failed"),
                // The accept loop ended (shutdown): graceful shutdown ends the server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientAddr(Some(self.local)))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Connections>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Connections>) -> Self {
        *stream.remote_addr()
    }
}

/// The transport of the dashboard's listener: the gRPC listener's TLS configuration, offering
/// HTTP/1.1 beside h2 (browsers and `curl` speak either), or plain text on loopback.
pub fn transport(transport: &Transport) -> Transport {
    match transport {
        Transport::InsecureLoopback => Transport::InsecureLoopback,
        Transport::Tls(config) => {
            let mut config = (**config).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Transport::Tls(Arc::new(config))
        }
    }
}

/// Serves the dashboard on `listener` until shutdown starts (`shared.subscribe_shutdown()`);
/// open event streams watch the same flag and end, so in-flight requests finish promptly.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let local = listener
        .local_addr()
        .context("reading the dashboard listener's address")?;
    let conns = crate::listener::incoming(
        listener,
        transport(&shared.config.transport),
        shared.config.connections,
        shared.revocations.clone(),
        shared.subscribe_shutdown(),
    );
    let mut shutdown = shared.subscribe_shutdown();
    let app = router(shared).into_make_service_with_connect_info::<ClientAddr>();
    axum::serve(Connections { conns, local }, app)
        .with_graceful_shutdown(async move {
            crate::shared::stopped(&mut shutdown).await;
        })
        .await
        .context("serving the dashboard")
}
