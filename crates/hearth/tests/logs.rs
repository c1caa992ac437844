//! The server log cannot be forged or garbled through a request: control characters that
//! arrive in paths and bodies (a `%0A` that would start a fake log line, a `%1B` that would
//! drive the reader's terminal) are escaped in the log, never written raw.

mod common;

use common::TestServer;

#[test]
fn control_characters_from_requests_are_escaped_in_the_log() {
    let s = TestServer::start();
    // Each of these reaches the server decoded (the CLI percent-encodes path segments)
    // and comes back as an error that echoes the input, which the server logs.
    let evil = "evil\nINFO fake line\u{1b}[31m";
    s.fails(&["image", "rm", evil]);
    s.fails(&["image", "load", &format!("/nonexistent/{evil}")]);
    s.fails(&["image", "pull", &format!("127.0.0.1:1/{evil}")]);
    let log = s.server_log();
    let raw: Vec<(usize, char)> = log
        .char_indices()
        .filter(|(_, c)| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in:\n{log:?}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("INFO fake line")),
        "a request forged a log line:\n{log}"
    );
    // The requests were logged, escaped: otherwise this test would prove nothing.
    assert!(
        log.contains(r"evil\nINFO fake line\u{1b}[31m"),
        "the failed requests are not in the log:\n{log}"
    );
}
