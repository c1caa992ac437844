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
                "first line\nonCreateCommand: boom",
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
