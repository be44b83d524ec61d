//! How many step results the controller takes in at once. A `ReportResult` is decoded before
//! its handler runs and held until its write commits; with a thousand agents ending their
//! steps together every decoded result waited for the write lock at the same time, and they
//! were a third of the controller's peak memory. [`Admitted`] lets at most
//! [`RESULTS_IN_FLIGHT`] of them be decoded and handled at once: the others wait undecoded,
//! as bytes in their connection's HTTP/2 window (flow control stops the agent sending more),
//! and go in as earlier ones are answered. Other calls pass straight through.
//!
//! 128 at once keeps SQLite's group commits large (one fsync for many results) and
//! PostgreSQL's pool busy; more only queue on the write lock or the run's row lock, holding
//! their decoded results. Measured with 1,000 agents (`BENCHMARKS.md`): peak RSS 410–428 MiB
//! without the limit, 281–295 MiB with 128, no slower; 64 cost time, 256 saved less.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::codegen::http;

/// Results decoded and handled at once, at most.
pub const RESULTS_IN_FLIGHT: usize = 128;

/// The path of the calls [`Admitted`] limits.
pub const REPORT_RESULT: &str = "/tollgate.v1.AgentService/ReportResult";

/// Wraps the agent service so that at most `permits` `ReportResult` calls are inside it at
/// once; a call waits for a permit before its request is read.
#[derive(Clone, Debug)]
pub struct Admitted<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Admitted<S> {
    /// `inner`, with at most `permits` results inside it at once.
    pub fn new(inner: S, permits: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Admitted<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != REPORT_RESULT {
            return Box::pin(self.inner.call(request));
        }
        // The service made ready is the one that must be called: take it, leave a clone.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let permits = self.permits.clone();
        Box::pin(async move {
            // Never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await;
            ready.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::watch;
    use tower::Service;

    /// A service that counts the calls inside it and answers once `open` is true.
    fn gated(
        inside: Arc<AtomicUsize>,
        open: watch::Receiver<bool>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = (),
        Error = Infallible,
        Future = impl Future<Output = Result<(), Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_request: http::Request<()>| {
            let inside = inside.clone();
            let mut open = open.clone();
            async move {
                inside.fetch_add(1, Ordering::SeqCst);
                let _ = open.wait_for(|open| *open).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn results_past_the_limit_wait_and_other_calls_do_not() {
        let inside = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let service = Admitted::new(gated(inside.clone(), gate), 2);
        let mut calls = Vec::new();
        for _ in 0..3 {
            let mut service = service.clone();
            calls.push(tokio::spawn(async move {
                service.call(request(REPORT_RESULT)).await
            }));
        }
        settle().await;
        assert_eq!(
            inside.load(Ordering::SeqCst),
            2,
            "two results inside, one waiting"
        );
        // Another call is not held back by the results' limit.
        let mut other = service.clone();
        let telemetry = tokio::spawn(async move {
            other
                .call(request("/tollgate.v1.AgentService/PushTelemetry"))
                .await
        });
        settle().await;
        assert_eq!(inside.load(Ordering::SeqCst), 3, "telemetry went in");
        open.send(true).unwrap();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        telemetry.await.unwrap().unwrap();
        assert_eq!(inside.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_finished_result_lets_a_waiting_one_in() {
        let inside = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let counting = {
            let entered = entered.clone();
            let mut inner = gated(inside.clone(), gate);
            tower::service_fn(move |request: http::Request<()>| {
                entered.fetch_add(1, Ordering::SeqCst);
                inner.call(request)
            })
        };
        let service = Admitted::new(counting, 1);
        let mut first = service.clone();
        let first = tokio::spawn(async move { first.call(request(REPORT_RESULT)).await });
        let mut second = service.clone();
        let second = tokio::spawn(async move { second.call(request(REPORT_RESULT)).await });
        settle().await;
        assert_eq!(
            entered.load(Ordering::SeqCst),
            1,
            "the second waits outside"
        );
        open.send(true).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(entered.load(Ordering::SeqCst), 2, "then it goes in");
    }
}
