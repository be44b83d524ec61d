//! End to end for paged lists: the CLI follows every page of a list longer than a page (or
//! stops at `--limit`), a page token of another list is refused naming `page_token`, and
//! entries inserted between pages neither repeat nor skip existing ones, on both backends.

use tollgate_controller::limits::LimitsConfig;
use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{Backend, Clients, Controller, ControllerOptions};
use tonic::Code;

tollgate_tests::on_both_backends!(
    the_cli_follows_every_page_in_order_and_stops_at_its_limit,
    a_page_token_of_another_list_or_filter_is_refused,
    entries_inserted_between_pages_neither_repeat_nor_skip_existing_ones,
);

/// A controller without a rate limit: these tests make many calls at once.
async fn controller(backend: Backend) -> Option<(Controller, Clients)> {
    let mut options = ControllerOptions::new(backend);
    options.limits = LimitsConfig {
        rate: tollgate_domain::rate::Rate {
            per_second: 0,
            burst: 0,
        },
        ..LimitsConfig::default()
    };
    let controller = Controller::start(options).await?;
    let clients = controller.clients().await;
    Some((controller, clients))
}

async fn create_releases(clients: &mut Clients, names: impl IntoIterator<Item = String>) {
    for name in names {
        clients.create_release(&name).await;
    }
}

async fn release_page(clients: &mut Clients, size: u32, token: &str) -> (Vec<String>, String) {
    let page = clients
        .releases
        .list_releases(v1::ListReleasesRequest {
            page_size: size,
            page_token: token.to_owned(),
        })
        .await
        .expect("a page of releases")
        .into_inner();
    let names = page.releases.into_iter().map(|r| r.name).collect();
    (names, page.next_page_token)
}

async fn the_cli_follows_every_page_in_order_and_stops_at_its_limit(backend: Backend) {
    let Some((controller, mut clients)) = controller(backend).await else {
        return;
    };
    let names: Vec<String> = (0..25).map(|i| format!("r{i:02}")).collect();
    create_releases(&mut clients, names.clone()).await;
    // Newest first.
    let expected: Vec<String> = names.iter().rev().cloned().collect();

    let listed = |args: &'static [&'static str]| {
        let url = controller.url.clone();
        async move {
            let mut all = vec!["release", "list", "-o", "json"];
            all.extend_from_slice(args);
            let output = tollgate(&url, &all).await;
            assert!(output.status.success(), "{}", text(&output.stderr));
            let json: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("JSON output");
            json["releases"]
                .as_array()
                .expect("a list of releases")
                .iter()
                .map(|r| r["name"].as_str().expect("a name").to_owned())
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(listed(&["--page-size", "10"]).await, expected);
    assert_eq!(listed(&[]).await, expected);
    assert_eq!(
        listed(&["--page-size", "10", "--limit", "12"]).await,
        expected[..12]
    );
    assert_eq!(listed(&["--limit", "3"]).await, expected[..3]);

    // The server's default page is 100 and its maximum 1000.
    let (page, token) = release_page(&mut clients, 0, "").await;
    assert_eq!((page.len(), token.as_str()), (25, ""));
    let refused = clients
        .releases
        .list_releases(v1::ListReleasesRequest {
            page_size: 1001,
            page_token: String::new(),
        })
        .await
        .expect_err("a page over the maximum");
    assert_bad_field(&refused, "page_size");
}

fn assert_bad_field(status: &tonic::Status, field: &str) {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{}", status.message());
}

async fn a_page_token_of_another_list_or_filter_is_refused(backend: Backend) {
    let Some((controller, mut clients)) = controller(backend).await else {
        return;
    };
    create_releases(&mut clients, (0..3).map(|i| format!("r{i}"))).await;
    let (_, releases_token) = release_page(&mut clients, 1, "").await;
    assert!(!releases_token.is_empty());

    let refused = clients
        .runs
        .list_runs(v1::ListRunsRequest {
            release: String::new(),
            page_size: 1,
            page_token: releases_token.clone(),
        })
        .await
        .expect_err("a ListReleases token on ListRuns");
    assert_bad_field(&refused, "page_token");
    assert!(
        refused.message().contains("ListReleases"),
        "{}",
        refused.message()
    );

    // An audit token with other filters, and one that is not a token at all.
    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let first = audit
        .list_audit(v1::ListAuditRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("a page of the audit log")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let refused = audit
        .list_audit(v1::ListAuditRequest {
            release: "r1".into(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("a token of other filters");
    assert_bad_field(&refused, "page_token");
    for garbage in ["not-a-token", "eyJsaXN0IjoicnVucyJ9"] {
        let refused = clients
            .releases
            .list_releases(v1::ListReleasesRequest {
                page_size: 1,
                page_token: garbage.into(),
            })
            .await
            .expect_err("garbage");
        assert_bad_field(&refused, "page_token");
    }
}

async fn entries_inserted_between_pages_neither_repeat_nor_skip_existing_ones(backend: Backend) {
    let Some((controller, mut clients)) = controller(backend).await else {
        return;
    };
    let names: Vec<String> = (0..12).map(|i| format!("old{i:02}")).collect();
    create_releases(&mut clients, names.clone()).await;

    // Newest first: releases created meanwhile are newer than every page's last entry.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let (page, next) = release_page(&mut clients, 5, &token).await;
        seen.extend(page);
        create_releases(&mut clients, [format!("new{round}")]).await;
        round += 1;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let expected: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(seen, expected);

    // Oldest first: entries appended meanwhile come after every existing one, each once.
    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let before = audit
        .list_audit(v1::ListAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("the whole log")
        .into_inner()
        .entries
        .len() as u64;
    let mut seqs = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_audit(v1::ListAuditRequest {
                page_size: 4,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("a page of the log")
            .into_inner();
        seqs.extend(page.entries.iter().map(|e| e.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        if seqs.len() < 12 {
            create_releases(&mut clients, [format!("more{}", seqs.len())]).await;
        }
        token = page.next_page_token;
    }
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every entry once, in order");
    assert!(
        seqs.len() as u64 > before,
        "the entries added meanwhile came last"
    );
}
