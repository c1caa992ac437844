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
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "after": after,
        "repository": {"clone_url": source, "default_branch": "main"},
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/hooks/github")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let r: WebhookResult = serde_json::from_slice(&b).unwrap();
    r.started
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failed = loop {
        if let Some(r) = runs_as(&h, &bob).await.into_iter().next() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no run recorded");
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
