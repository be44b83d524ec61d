//! End to end for the controller's limits: a request larger than its service accepts, more
//! streams than one identity may hold open, manager calls faster than the rate limit. Each is
//! `RESOURCE_EXHAUSTED` saying the limit and what to do, and the controller keeps serving.
//! Connections over the caps are closed at accept, silent ones after the idle timeout.

use std::sync::Arc;
use std::time::Duration;
use tollgate_controller::clock::{Clock as _, ManualClock, SystemClock};
use tollgate_controller::limits::LimitsConfig;
use tollgate_domain::rate::Rate;
use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, plan_yaml, wait_for};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_request_is_refused_and_the_controller_keeps_serving() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let channel = controller.channel().await;
    let mut releases = v1::release_service_client::ReleaseServiceClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX);
    let huge = v1::CreateReleaseRequest {
        name: "r-huge".into(),
        description: "x".repeat(100 * 1024 * 1024),
        ..Default::default()
    };
    let refused = releases
        .create_release(huge)
        .await
        .expect_err("a 100 MB request is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("(4194304 bytes")
            && refused.message().contains("send less in one call"),
        "{}",
        refused.message()
    );

    // A small service has a small limit: a 300 KiB selector is too much for ListNodes.
    let mut nodes = v1::node_service_client::NodeServiceClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX);
    let selector = (0..300)
        .map(|i| (format!("key-{i}"), "v".repeat(1024)))
        .collect();
    let refused = nodes
        .list_nodes(v1::ListNodesRequest {
            selector,
            ..Default::default()
        })
        .await
        .expect_err("a 300 KiB ListNodes request is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("(262144 bytes"),
        "{}",
        refused.message()
    );

    // Normal calls, on the same channel, still succeed.
    let mut clients = controller.clients().await;
    clients.create_release("r1").await;
    let listed = releases
        .list_releases(v1::ListReleasesRequest::default())
        .await
        .expect("the controller still serves")
        .into_inner();
    let names: Vec<&str> = listed.releases.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r1"]);
}

fn bearer(
    secret: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("header"),
        );
        Ok(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_calls_over_the_rate_limit_are_refused_per_identity_until_the_bucket_refills() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.clock = Some(clock.clone());
    options.api_tokens = vec![
        ("alice".into(), "s3cret-alice".into()),
        ("bob".into(), "s3cret-bob".into()),
    ];
    options.limits = LimitsConfig {
        rate: Rate {
            per_second: 1,
            burst: 3,
        },
        ..LimitsConfig::default()
    };
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let channel = controller.channel().await;
    let mut alice = v1::node_service_client::NodeServiceClient::with_interceptor(
        channel.clone(),
        bearer("s3cret-alice"),
    );
    let mut bob = v1::node_service_client::NodeServiceClient::with_interceptor(
        channel.clone(),
        bearer("s3cret-bob"),
    );
    // The clock stands still: alice has her burst and no more.
    for _ in 0..3 {
        alice
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .expect("within the burst");
    }
    let refused = alice
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("token alice")
            && refused.message().contains("retry after 1000 ms"),
        "{}",
        refused.message()
    );
    use tonic_types::StatusExt as _;
    let retry = refused
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo travels with the refusal");
    assert_eq!(retry, Duration::from_secs(1));

    // Another identity has its own bucket.
    bob.list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("bob is not limited by alice's calls");

    // A second later alice may call once more.
    clock.advance(chrono::Duration::seconds(1));
    alice
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("the bucket refilled by one call");
    assert_eq!(
        alice
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .expect_err("and only one")
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_holds_at_most_the_limit_of_streams_and_a_closed_one_frees_its_slot() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.limits = LimitsConfig {
        streams_per_identity: 2,
        ..LimitsConfig::default()
    };
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let agent = Agent::start(&controller.url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    clients.create_release("r1").await;
    clients.apply_plan(&plan_yaml(60.0)).await;
    clients.wait_ready_nodes(1).await;
    let run = clients.start_run("r1", "gpu-qual").await;
    let watch = |clients: &tollgate_tests::Clients| {
        let mut runs = clients.runs.clone();
        let id = run.id.clone();
        async move {
            runs.watch_run(v1::GetRunRequest {
                id,
                ..Default::default()
            })
            .await
        }
    };

    let mut first = watch(&clients).await.expect("first stream").into_inner();
    let mut second = watch(&clients).await.expect("second stream").into_inner();
    for stream in [&mut first, &mut second] {
        stream
            .message()
            .await
            .expect("the stream answers")
            .expect("the run's current state");
    }
    let refused = watch(&clients)
        .await
        .expect_err("a third stream is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("already has 2 open streams")
            && refused.message().contains("close a WatchRun"),
        "{}",
        refused.message()
    );
    // The agent's own streams count against its node, not against this caller: the run goes on.
    assert_eq!(clients.run(&run.id).await.state, "running");

    drop(first);
    let _third = wait_for(
        Duration::from_secs(10),
        "the closed stream's slot to be free",
        || {
            let attempt = watch(&clients);
            async move {
                match attempt.await {
                    Ok(stream) => Some(stream),
                    Err(status) if status.code() == Code::ResourceExhausted => None,
                    Err(status) => panic!("unexpected refusal: {status:?}"),
                }
            }
        },
    )
    .await;
    clients
        .runs
        .cancel_run(v1::CancelRunRequest { id: run.id.clone() })
        .await
        .expect("cancel the run");
    agent.stop().await;
}

/// Opens `n` TCP connections to `target` from `source` (another loopback address), sending
/// nothing on them.
async fn silent_connections(
    source: std::net::IpAddr,
    target: std::net::SocketAddr,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("any 127.x address is loopback");
        streams.push(socket.connect(target).await.expect("the kernel accepts it"));
    }
    streams
}

/// Whether the controller kept a connection: it sends its HTTP/2 settings on one it serves,
/// and closes one over a cap without a byte.
async fn kept(mut stream: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 64];
    match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
        Err(_) => panic!("the controller neither served nor closed a connection in 20 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_closed_at_accept_and_others_are_served() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.connections.per_ip = 50;
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let flooder: std::net::IpAddr = "127.0.0.2".parse().expect("address");
    let flood = silent_connections(flooder, controller.addr, 1_000).await;

    // The controller answers a caller from another address during the flood.
    let mut nodes = v1::node_service_client::NodeServiceClient::new(controller.channel().await);
    nodes
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("the controller answers during the flood");

    let kept_flags = futures::future::join_all(flood.into_iter().map(kept)).await;
    let n_kept = kept_flags.iter().filter(|kept| **kept).count();
    assert_eq!(n_kept, 50, "the per-address cap holds the rest off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt as _;
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.connections.idle_timeout = Duration::from_secs(2);
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let flooder: std::net::IpAddr = "127.0.0.3".parse().expect("address");
    let mut stream = silent_connections(flooder, controller.addr, 1)
        .await
        .pop()
        .expect("one");
    let opened = std::time::Instant::now();
    let mut buf = [0_u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's settings
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent connection is closed");
    assert!(
        opened.elapsed() >= Duration::from_millis(1_900),
        "closed after the idle timeout, not before: {:?}",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_filling_every_place_give_theirs_up_to_a_real_client() {
    use tokio::io::AsyncReadExt as _;
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    options.connections.max = 100;
    options.connections.per_ip = 10_000;
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let flooder: std::net::IpAddr = "127.0.0.4".parse().expect("address");
    let flood = silent_connections(flooder, controller.addr, 300).await;

    // Every place is taken by a connection that never starts its TLS handshake; a real
    // client still gets in, in place of the oldest of them.
    let mut nodes = v1::node_service_client::NodeServiceClient::new(controller.channel().await);
    nodes
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("the controller answers during the flood");

    // The flood lost its places, oldest first, long before the handshake deadline.
    let closed = futures::future::join_all(flood.into_iter().map(|mut stream| async move {
        let mut buf = [0_u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await;
    let n_closed = closed.iter().filter(|closed| **closed).count();
    assert!(
        n_closed >= 200,
        "{n_closed} of 300 silent connections closed"
    );
}
