//! `hearth server --priority-rules`: a file it cannot use is refused before the server
//! touches anything, with the file and line named.

use std::process::Command;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

#[test]
fn broken_rules_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        "{\n  \"rules\": [\n    {\"exe\": [\"cc1\"], \"class\": \"turbo\"}\n  ]\n}\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = Command::new(HEARTH)
        .arg("--data-dir")
        .arg(&data)
        .args(["server", "--listen", "127.0.0.1:0", "--priority-rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&rules.display().to_string()), "{err}");
    assert!(err.contains("unknown class \"turbo\""), "{err}");
    assert!(err.contains("line 3"), "{err}");
    // Refused before the data dir was taken or written.
    assert!(!data.join("node.json").exists());

    std::fs::write(&rules, "{\"rules\": [}").unwrap();
    let out = Command::new(HEARTH)
        .arg("--data-dir")
        .arg(&data)
        .args(["server", "--listen", "127.0.0.1:0", "--priority-rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("line 1 column"), "{err}");
}
