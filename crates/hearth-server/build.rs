//! Picks the dashboard's assets to embed: `web/dist` when `scripts/build.sh` (npm) built
//! it, else a one-page "dashboard not built" placeholder, so `cargo build` alone (CI's
//! clippy, `cargo test`) compiles without node.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dist = Path::new(&manifest).join("../../web/dist");
    // Watching the directory reruns this script (and re-embeds) whenever npm rebuilds it.
    println!("cargo:rerun-if-changed={}", dist.display());
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );
    println!("cargo:rerun-if-changed=web-missing");
    let dir = if dist.join("index.html").is_file() {
        println!("cargo:rustc-env=HEARTH_WEB_BUILT=1");
        dist
    } else {
        println!("cargo:rustc-env=HEARTH_WEB_BUILT=0");
        Path::new(&manifest).join("web-missing")
    };
    let dir = dir.canonicalize().expect("the dashboard directory exists");
    println!("cargo:rustc-env=HEARTH_WEB_DIR={}", dir.display());
}
