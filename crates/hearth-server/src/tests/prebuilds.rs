//! Prebuild records across users, against the in-memory node: what a listing shows to
//! users other than a prebuild's maker, and what goes when its maker is removed.

use super::users::{add_user, create_as, post_workspace};
use super::*;

on_both_backends!(
    a_shared_prebuild_does_not_show_its_makers_credentials,
    a_removed_users_prebuilds_go_with_them,
    nobody_takes_a_prebuilds_workspace_name,
    a_replayed_push_builds_nothing_new,
    a_prebuilds_sessions_get_no_secrets,
    prebuild_runs_are_recorded_shown_to_their_owner_and_kept_per_series,
    a_running_prebuilds_log_is_read_and_followed_to_its_end,
    webhook_deliveries_are_claimed_once_answered_and_pruned,
    a_redelivered_webhook_is_answered_as_before_by_any_server,
);
use crate::db::{PrebuildRecord, PrebuildRunRecord};
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn prebuild(snapshot: &str, owner: &str, shared: bool, source: &str) -> PrebuildRecord {
    PrebuildRecord {
        snapshot: snapshot.into(),
        series: "0123456789abcdef0123456789abcdef".into(),
        owner: owner.into(),
        shared,
        source: source.into(),
        branch: None,
        commit: "a".repeat(40),
        config_hash: "h".into(),
        image: "sha256:abc".into(),
        config_file: ".devcontainer/devcontainer.json".into(),
        created_at: now(),
        feature_lifecycle: None,
    }
}

async fn prebuilds_as(h: &Harness, token: &str) -> Vec<Prebuild> {
    let (s, b) = h
        .call(Method::GET, "/v1/prebuilds", Some(token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

/// A GitHub push of `source`'s `main` (to commit `b...`), signed with `secret`; the
/// sources it started.
async fn push(h: &Harness, secret: &[u8], source: &str) -> Vec<String> {
    push_to(h, secret, source, &"b".repeat(40)).await
}

async fn push_to(h: &Harness, secret: &[u8], source: &str, after: &str) -> Vec<String> {
    let (status, b) = deliver(&h.app, secret, &push_body(source, after), &[]).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let r: WebhookResult = serde_json::from_slice(&b).unwrap();
    r.started
}

/// A GitHub push event of `source`'s `main`, now at `after`.
fn push_body(source: &str, after: &str) -> String {
    serde_json::json!({
        "ref": "refs/heads/main",
        "after": after,
        "repository": {"clone_url": source, "default_branch": "main"},
    })
    .to_string()
}

/// Delivers `body` to `app`'s GitHub webhook signed with `secret`, with `extra` headers.
async fn deliver(
    app: &axum::Router,
    secret: &[u8],
    body: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, Vec<u8>) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/hooks/github")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, b.to_vec())
}

async fn a_shared_prebuild_does_not_show_its_makers_credentials(b: Backend) {
    let h = shared_harness(b, FakeNode::default()).await;
    let bob = add_user(&h, "bob", false).await;
    let source = "https://admin:s3cr3t-token@git.example.com/team/app.git";
    h.manager
        .store()
        .insert_prebuild(&prebuild("s1", "admin", true, source))
        .await
        .unwrap();
    // Bob may start from it, but the token in its URL is the admin's.
    let seen = prebuilds_as(&h, &bob).await;
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].source.contains("s3cr3t"), "{}", seen[0].source);
    assert_eq!(seen[0].source, "https://***@git.example.com/team/app.git");
    // Its maker sees the source as given.
    assert_eq!(prebuilds_as(&h, TOKEN).await[0].source, source);
    // Nor does a webhook's answer (the forge shows it in its delivery log).
    let secret = b"0123456789abcdef-webhook";
    h.manager.set_webhook_secret(Some(secret.to_vec()));
    let started = push(&h, secret, source).await;
    assert_eq!(started, ["https://***@git.example.com/team/app.git"]);
}

async fn a_removed_users_prebuilds_go_with_them(b: Backend) {
    let h = shared_harness(b, FakeNode::default()).await;
    add_user(&h, "bob", false).await;
    h.manager
        .store()
        .insert_prebuild(&prebuild(
            "s1",
            "bob",
            false,
            "https://git.example.com/bob/private",
        ))
        .await
        .unwrap();
    let (s, b) = h
        .call(Method::DELETE, "/v1/users/bob", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    // Nothing is rebuilt for a user who is gone.
    let secret = b"0123456789abcdef-webhook";
    h.manager.set_webhook_secret(Some(secret.to_vec()));
    assert!(push(&h, secret, "https://git.example.com/bob/private")
        .await
        .is_empty());
    // A new user of the same name does not start from the old one's files.
    let bob2 = add_user(&h, "bob", false).await;
    assert!(prebuilds_as(&h, &bob2).await.is_empty());
}

async fn nobody_takes_a_prebuilds_workspace_name(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("busybox")).await;
    let bob = add_user(&h, "bob", false).await;
    // Alice's series name is computable from her repository: Bob's workspace of that name
    // would make each of her prebuilds (and webhook refreshes) fail as a conflict.
    let (s, b) = post_workspace(&h, &bob, "prebuild-0123456789ab").await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let e: ErrorBody = serde_json::from_slice(&b).unwrap();
    assert!(e.error.message.contains("reserved for prebuilds"), "{e:?}");
    // A repository merely named like one still gets its own name.
    create_as(&h, &bob, "prebuild-tools").await;
}

async fn a_replayed_push_builds_nothing_new(b: Backend) {
    let h = shared_harness(b, FakeNode::default()).await;
    let source = "https://git.example.com/team/app.git";
    // The series' prebuild is at commit a...
    h.manager
        .store()
        .insert_prebuild(&prebuild("s1", "admin", true, source))
        .await
        .unwrap();
    let secret = b"0123456789abcdef-webhook";
    h.manager.set_webhook_secret(Some(secret.to_vec()));
    // ... so a delivery of the push to a... (sent again, or replayed by whoever saw it)
    // starts nothing; a push to another commit does.
    assert!(push_to(&h, secret, source, &"a".repeat(40))
        .await
        .is_empty());
    assert_eq!(push(&h, secret, source).await, [source]);
}

async fn a_prebuilds_sessions_get_no_secrets(b: Backend) {
    let node = FakeNode::default();
    let h = harness_on(b, node.clone()).await;
    h.manager
        .set_secret_box(crate::secrets::SecretBox::from_key(&[7; 32]));
    let (s, b) = h
        .call(
            Method::PUT,
            "/v1/secrets/TOKEN",
            Some(TOKEN),
            Some(r#"{"value":"hunter2"}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // An ordinary workspace's session has the owner's secret; one in a prebuild's (whose
    // snapshot every user may start from) has none, as its lifecycle commands have none.
    let ws = record("000000000001", "ws", 1, WorkspaceState::Running);
    let pre = record(
        &"0".repeat(32),
        "prebuild-000000000000",
        2,
        WorkspaceState::Running,
    );
    for rec in [&ws, &pre] {
        h.manager.store().insert(rec).await.unwrap();
        let req = hearth_node::ExecRequest {
            argv: vec!["env".into()],
            ..Default::default()
        };
        drop(h.manager.exec(&rec.spec, req).await.unwrap());
    }
    let execs = node.st().execs.clone();
    let has = |i: usize| {
        execs[i]
            .env
            .iter()
            .any(|(k, v)| k == "TOKEN" && v == "hunter2")
    };
    assert_eq!(execs.len(), 2);
    assert!(has(0), "{:?}", execs[0].env);
    assert!(!has(1), "{:?}", execs[1].env);
}

fn run(id: &str, series: &str, owner: &str, server: Option<&str>, at: u32) -> PrebuildRunRecord {
    PrebuildRunRecord {
        id: id.into(),
        series: series.into(),
        owner: owner.into(),
        source: "https://git.example.com/team/app.git".into(),
        branch: None,
        config_file: Some(".devcontainer.json".into()),
        commit: Some("c".repeat(40)),
        trigger: "webhook".into(),
        state: "running".into(),
        error: None,
        log: None,
        log_lines: 0,
        snapshot: None,
        server: server.map(str::to_string),
        started_at: format!("2030-01-01T00:00:{at:02}.000000000Z"),
        finished_at: None,
    }
}

async fn runs_as(h: &Harness, token: &str) -> Vec<PrebuildRun> {
    let (s, b) = h
        .call(Method::GET, "/v1/prebuild-runs", Some(token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

async fn prebuild_runs_are_recorded_shown_to_their_owner_and_kept_per_series(b: Backend) {
    let h = shared_harness(b, FakeNode::default()).await;
    let bob = add_user(&h, "bob", false).await;
    let store = h.manager.store();
    let (s1, s2) = ("1".repeat(32), "2".repeat(32));

    // Finished runs beyond the newest 20 of a series go as another finishes; running
    // ones and other series' stay.
    store
        .insert_prebuild_run(&run("00000000ffff", &s2, "admin", Some("b"), 0))
        .await
        .unwrap();
    store
        .insert_prebuild_run(&run("00000000eeee", &s1, "admin", Some("b"), 0))
        .await
        .unwrap();
    for i in 1..=23u32 {
        let id = format!("{i:012x}");
        store
            .insert_prebuild_run(&run(&id, &s1, "admin", Some("a"), i))
            .await
            .unwrap();
        let failed = i % 2 == 0;
        store
            .finish_prebuild_run(
                &id,
                if failed { "failed" } else { "ready" },
                failed.then_some("onCreateCommand failed with exit code 3: boom"),
                ("first line\nonCreateCommand: boom", 2),
                (!failed).then_some("s"),
            )
            .await
            .unwrap();
    }
    let all = store.prebuild_runs().await.unwrap();
    let of_s1: Vec<&str> = all
        .iter()
        .filter(|r| r.series == s1 && r.state != "running")
        .map(|r| r.id.as_str())
        .collect();
    let want: Vec<String> = (4..=23u32).rev().map(|i| format!("{i:012x}")).collect();
    assert_eq!(of_s1, want, "the newest 20, newest first");
    assert!(
        all.iter().any(|r| r.id == "00000000eeee"),
        "a running run went"
    );
    assert!(all.iter().any(|r| r.id == "00000000ffff"));

    // Through the API: its owner (and admins) see it with its log and reason.
    let seen = runs_as(&h, TOKEN).await;
    assert_eq!(seen.len(), 22);
    let (s, body) = h
        .call(
            Method::GET,
            &format!("/v1/prebuild-runs/{:012x}", 22),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let one: PrebuildRunLog = serde_json::from_slice(&body).unwrap();
    assert_eq!(one.run.state, PrebuildRunState::Failed);
    assert_eq!(one.run.trigger, PrebuildTrigger::Webhook);
    assert_eq!(one.log, ["first line", "onCreateCommand: boom"]);
    assert!(one.run.error.unwrap().contains("exit code 3"));
    assert!(one.run.finished_at.is_some());
    // Nobody else's.
    assert!(runs_as(&h, &bob).await.is_empty());
    let (s, _) = h
        .call(
            Method::GET,
            &format!("/v1/prebuild-runs/{:012x}", 22),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(
            Method::GET,
            "/v1/prebuild-runs/..%2F..%2Fetc",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A run whose server restarted or is gone ends failed; others' stay running.
    assert_eq!(
        store
            .fail_prebuild_runs_of(&["b".into()], "the server restarted while it ran")
            .await
            .unwrap(),
        2
    );
    let r = store.prebuild_run("00000000eeee").await.unwrap().unwrap();
    assert_eq!(r.state, "failed");
    assert_eq!(
        r.error.as_deref(),
        Some("the server restarted while it ran")
    );
    assert!(store.prebuild_run_servers().await.unwrap().is_empty());

    // A webhook prebuild refused before it runs (here: the node finds no
    // devcontainer.json) is recorded failed for its owner, with the pushed commit.
    let source = "https://git.example.com/bob/app.git";
    store
        .insert_prebuild(&prebuild("s1", "bob", false, source))
        .await
        .unwrap();
    let secret = b"0123456789abcdef-webhook";
    h.manager.set_webhook_secret(Some(secret.to_vec()));
    assert_eq!(push(&h, secret, source).await, [source]);
    // Recorded running when the webhook is answered, failed once its plan is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failed = loop {
        let runs = runs_as(&h, &bob).await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        if runs[0].state != PrebuildRunState::Running {
            break runs[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the run did not end");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(failed.state, PrebuildRunState::Failed);
    assert_eq!(failed.trigger, PrebuildTrigger::Webhook);
    assert_eq!(failed.commit.as_deref(), Some("b".repeat(40).as_str()));
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("has no devcontainer.json"),
        "{failed:?}"
    );
    // A removed user's runs go with them.
    let (s, _) = h
        .call(Method::DELETE, "/v1/users/bob", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(store.prebuild_run(&failed.id).await.unwrap().is_none());
}

/// The next ndjson line of a streamed body (`buf` keeps what came past it).
async fn next_line(body: &mut Body, buf: &mut Vec<u8>) -> Option<StreamLine<PrebuildRun>> {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return Some(serde_json::from_slice(&line).unwrap());
        }
        // (The bound only keeps a broken follow from hanging the test.)
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame())
            .await
            .expect("no line within 30 s");
        match frame {
            Some(f) => {
                if let Ok(data) = f.unwrap().into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            None => {
                assert!(buf.is_empty(), "a partial line at the end: {buf:?}");
                return None;
            }
        }
    }
}

fn progress(line: Option<StreamLine<PrebuildRun>>) -> String {
    match line {
        Some(StreamLine::Progress(p)) => p,
        other => panic!("not a progress line: {other:?}"),
    }
}

/// A running prebuild's log as its server writes it (a tail and a count of lines): read
/// mid-run, and followed from another request to the run's end, the lines that came
/// between two reads sent once (those the tail no longer had said so), then the run.
async fn a_running_prebuilds_log_is_read_and_followed_to_its_end(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let bob = add_user(&h, "bob", false).await;
    let store = h.manager.store();
    let id = "00000000abcd";
    store
        .insert_prebuild_run(&run(id, &"3".repeat(32), "admin", Some("a"), 0))
        .await
        .unwrap();
    store.set_prebuild_run_log(id, "one\ntwo", 2).await.unwrap();
    let uri = format!("/v1/prebuild-runs/{id}");
    let (s, body) = h.call(Method::GET, &uri, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let mid: PrebuildRunLog = serde_json::from_slice(&body).unwrap();
    assert_eq!(mid.run.state, PrebuildRunState::Running);
    assert_eq!(mid.log, ["one", "two"]);

    // Follow it: the log so far, then what is written after.
    let follow = format!("{uri}?follow=true");
    let req = Request::builder()
        .uri(&follow)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], hearth_api::NDJSON);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "one");
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "two");
    // The tail moved on by one: only the new line comes.
    store
        .set_prebuild_run_log(id, "two\nthree", 3)
        .await
        .unwrap();
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "three");
    // More came than the tail keeps: the follower is told, and gets what is kept.
    store
        .set_prebuild_run_log(id, "six\nseven", 7)
        .await
        .unwrap();
    assert_eq!(
        progress(next_line(&mut body, &mut buf).await),
        "[2 lines not kept]"
    );
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "six");
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "seven");
    // The end: its last lines, then the run, then nothing.
    store
        .finish_prebuild_run(
            id,
            "failed",
            Some("onCreateCommand failed with exit code 3"),
            ("seven\n\neight", 9),
            None,
        )
        .await
        .unwrap();
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "");
    assert_eq!(progress(next_line(&mut body, &mut buf).await), "eight");
    match next_line(&mut body, &mut buf).await {
        Some(StreamLine::Result(r)) => {
            assert_eq!(r.state, PrebuildRunState::Failed);
            assert_eq!(
                r.error.as_deref(),
                Some("onCreateCommand failed with exit code 3")
            );
            assert!(r.finished_at.is_some());
        }
        other => panic!("no result line: {other:?}"),
    }
    assert!(next_line(&mut body, &mut buf).await.is_none());

    // An ended run's log is its end's: a late write of the running log changes nothing.
    store.set_prebuild_run_log(id, "late", 10).await.unwrap();
    let (s, body) = h.call(Method::GET, &uri, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let end: PrebuildRunLog = serde_json::from_slice(&body).unwrap();
    assert_eq!(end.log, ["seven", "", "eight"]);
    // Followed once ended: the log and the run at once.
    let (s, body) = h.call(Method::GET, &follow, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let mut all = Body::from(body);
    let mut buf = Vec::new();
    for want in ["seven", "", "eight"] {
        assert_eq!(progress(next_line(&mut all, &mut buf).await), want);
    }
    assert!(matches!(
        next_line(&mut all, &mut buf).await,
        Some(StreamLine::Result(_))
    ));
    assert!(next_line(&mut all, &mut buf).await.is_none());

    // Nobody else's; a query that is not a yes or no is refused.
    let (s, _) = h.call(Method::GET, &follow, Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = h
        .call(
            Method::GET,
            &format!("{uri}?follow=maybe"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// The deliveries table alone: one claim wins (also among concurrent claims from two
/// servers' pools), its answer is what later copies get, a failed one is released, an
/// abandoned one is taken over, and the table is kept short by age and by count.
async fn webhook_deliveries_are_claimed_once_answered_and_pruned(b: Backend) {
    let db = crate::db::testdb::TestDb::new(b);
    let (one, two) = (db.store().await, db.store().await);
    let past = "2000-01-01T00:00:00.000000000Z";
    let future = "2999-01-01T00:00:00.000000000Z";
    use crate::db::DeliveryClaim::*;
    assert_eq!(
        one.claim_delivery("github:a", "h1", past).await.unwrap(),
        New
    );
    assert_eq!(
        two.claim_delivery("github:a", "h1", past).await.unwrap(),
        Pending
    );
    assert_eq!(
        two.claim_delivery("github:a", "h2", past).await.unwrap(),
        OtherBody
    );
    // Not the same delivery as another forge's of the same id.
    assert_eq!(
        two.claim_delivery("gitea:a", "h1", past).await.unwrap(),
        New
    );
    one.answer_delivery("github:a", r#"{"started":["x"]}"#)
        .await
        .unwrap();
    assert_eq!(
        two.claim_delivery("github:a", "h1", past).await.unwrap(),
        Answered(r#"{"started":["x"]}"#.into())
    );
    // Answered is answered, even long after its claim.
    assert_eq!(
        two.claim_delivery("github:a", "h1", future).await.unwrap(),
        Answered(r#"{"started":["x"]}"#.into())
    );
    one.release_delivery("github:a").await.unwrap();
    assert!(matches!(
        two.claim_delivery("github:a", "h1", past).await.unwrap(),
        Answered(_)
    ));
    // Released: handled anew.
    assert_eq!(
        one.claim_delivery("github:b", "h", past).await.unwrap(),
        New
    );
    one.release_delivery("github:b").await.unwrap();
    assert_eq!(
        two.claim_delivery("github:b", "h", past).await.unwrap(),
        New
    );
    // Abandoned (its claim older than the stale cutoff): taken over, once.
    assert_eq!(
        one.claim_delivery("github:b", "h", future).await.unwrap(),
        New
    );
    assert_eq!(
        two.claim_delivery("github:b", "h", past).await.unwrap(),
        Pending
    );

    // Two servers, many copies at once: one is handled.
    let mut claims = Vec::new();
    for i in 0..12 {
        let s = if i % 2 == 0 { one.clone() } else { two.clone() };
        claims.push(tokio::spawn(async move {
            s.claim_delivery("github:c", "h", past).await.unwrap()
        }));
    }
    let mut won = 0;
    for c in claims {
        match c.await.unwrap() {
            New => won += 1,
            Pending => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);

    // Pruned to the newest `keep`, and by age.
    for i in 0..6 {
        one.claim_delivery(&format!("github:p{i}"), "h", past)
            .await
            .unwrap();
    }
    assert!(one.prune_deliveries(past, 3).await.unwrap() >= 6);
    for i in 3..6 {
        assert_eq!(
            one.claim_delivery(&format!("github:p{i}"), "h", past)
                .await
                .unwrap(),
            Pending,
            "p{i}, among the newest, was kept"
        );
    }
    assert_eq!(
        one.claim_delivery("github:p0", "h", past).await.unwrap(),
        New,
        "the oldest went"
    );
    one.prune_deliveries(future, 1000).await.unwrap();
    assert_eq!(
        one.claim_delivery("github:a", "h1", past).await.unwrap(),
        New
    );
}

/// A push delivery sent again, to this server or another of its database, is answered
/// as the first was and starts no run; another delivery of the same push does. A
/// delivery id that is not one is refused before anything is handled.
async fn a_redelivered_webhook_is_answered_as_before_by_any_server(b: Backend) {
    let h = shared_harness(b, FakeNode::default()).await;
    // A second server of the same database.
    let other = Manager::shared(h._db.store().await, Arc::new(FakeNode::default()));
    let other_app = app_of(
        other.clone(),
        h._db.dir.path(),
        Default::default(),
        Default::default(),
    );
    let secret = b"0123456789abcdef-webhook";
    h.manager.set_webhook_secret(Some(secret.to_vec()));
    other.set_webhook_secret(Some(secret.to_vec()));
    let source = "https://git.example.com/team/app.git";
    h.manager
        .store()
        .insert_prebuild(&prebuild("s1", "admin", true, source))
        .await
        .unwrap();
    // Each run of this push fails (the node has no devcontainer.json), so none stops
    // the next from being made: only the delivery id can. A run is recorded before the
    // answer names it.
    let body = push_body(source, &"b".repeat(40));
    let d1 = [("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    let run_ids = || async {
        let mut ids: Vec<String> = runs_as(&h, TOKEN).await.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let (s, first) = deliver(&h.app, secret, &body, &d1).await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&first)
    );
    let answer: WebhookResult = serde_json::from_slice(&first).unwrap();
    assert_eq!(answer.started, [source]);
    assert_eq!(answer.runs.len(), 1);
    assert_eq!(run_ids().await, answer.runs);
    // Sent again, to either server: the same answer, nothing started.
    for app in [&other_app, &h.app] {
        let (s, again) = deliver(app, secret, &body, &d1).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&first)
        );
        assert_eq!(run_ids().await, answer.runs);
    }
    // Another delivery of the same push is handled: another run.
    let d2 = [("x-github-delivery", "0f3c2b1a-cc78-11e3-81ab-4c9367dc0958")];
    let (s, second) = deliver(&other_app, secret, &body, &d2).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let second: WebhookResult = serde_json::from_slice(&second).unwrap();
    assert_eq!(second.started, [source]);
    assert_eq!(second.runs.len(), 1);
    assert_ne!(second.runs, answer.runs);
    let mut both = [answer.runs.clone(), second.runs.clone()].concat();
    both.sort();
    assert_eq!(run_ids().await, both);
    // Without a delivery id, every copy is handled (as before ids were kept).
    let (s, third) = deliver(&h.app, secret, &body, &[]).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let third: WebhookResult = serde_json::from_slice(&third).unwrap();
    assert_eq!(third.runs.len(), 1);
    assert_eq!(run_ids().await.len(), 3);
    // The same id with another body is not a redelivery.
    let (s, e) = deliver(&h.app, secret, &push_body(source, &"c".repeat(40)), &d1).await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&e));
    assert!(String::from_utf8_lossy(&e).contains("another body"));

    // Hostile ids: refused, saying what an id is, and nothing handled.
    let long = "a".repeat(101);
    for bad in [
        "",
        "a b",
        "../../etc",
        "a;b",
        "\u{e9}t\u{e9}",
        long.as_str(),
    ] {
        let Ok(v) = axum::http::HeaderValue::from_bytes(bad.as_bytes()) else {
            continue;
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/hooks/github")
            .header("x-github-event", "push")
            .header("x-github-delivery", v)
            .header("x-hub-signature-256", {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
                mac.update(body.as_bytes());
                format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
            })
            .body(Body::from(body.clone()))
            .unwrap();
        let resp = h.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {text}");
        assert!(
            text.contains("x-github-delivery must be 1 to 100"),
            "{text}"
        );
    }
    let (s, e) = deliver(&h.app, secret, &body, &[d1[0], d2[0]]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&e).contains("more than one"));
    // Unsigned, a delivery id is not even looked at.
    let (s, _) = deliver(
        &h.app,
        b"not-the-secret-at-all",
        &body,
        &[("x-github-delivery", "a b")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(run_ids().await.len(), 3);
    // The failed runs say why, with the pushed commit.
    for r in runs_as(&h, TOKEN).await {
        assert_eq!(r.commit.as_deref(), Some("b".repeat(40).as_str()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = h
                .manager
                .store()
                .prebuild_run(&r.id)
                .await
                .unwrap()
                .unwrap();
            if r.state != "running" {
                let e = r.error.unwrap();
                assert!(e.contains("has no devcontainer.json"), "{e}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{r:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The OpenAPI document says how to follow a run and how deliveries are told apart.
#[tokio::test]
async fn openapi_documents_run_following_and_delivery_ids() {
    let h = harness(FakeNode::default()).await;
    let (s, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let rm = &doc["paths"]["/v1/prebuilds/{snapshot}"]["delete"]["parameters"];
    assert_eq!(rm.as_array().unwrap().len(), 1, "{rm}");
    let run = &doc["paths"]["/v1/prebuild-runs/{id}"]["get"];
    let params: Vec<&str> = run["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["id", "follow"], "{run}");
    let content = &run["responses"]["200"]["content"];
    assert!(content["application/json"].is_object(), "{content}");
    assert!(content["application/x-ndjson"].is_object(), "{content}");
    let hook = &doc["paths"]["/v1/hooks/{forge}"]["post"];
    let headers: Vec<(&str, &serde_json::Value)> = hook["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| (p["name"].as_str().unwrap(), &p["schema"]))
        .collect();
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "X-GitHub-Delivery",
            "X-Gitea-Delivery",
            "Idempotency-Key",
            "X-Gitlab-Event-UUID"
        ]
    );
    for (_, schema) in headers {
        assert_eq!(schema["maxLength"], 100, "{schema}");
        assert_eq!(schema["pattern"], "^[A-Za-z0-9._-]+$", "{schema}");
    }
    assert!(hook["responses"]["409"].is_object());
}
