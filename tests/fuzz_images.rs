//! The image fuzzer (`tools/fuzz`, `biofs-fuzz`) with a small budget: a
//! few structured and raw mutations of a populated image, each case in a
//! child process with a time and memory limit, must end with no panic, no
//! hang, and no repair that leaves a file unreadable. The long run is
//! `biofs-fuzz --seconds 3600` (docs/testing.md, "Fuzzing images").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code (with its shared helpers), where a panic is a failed test"
)]

use std::process::Command;

#[test]
fn fuzz_images_small_budget() {
    let seed = std::env::var("BIOFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1000);
    let out = Command::new(env!("CARGO_BIN_EXE_biofs-fuzz"))
        .args(["--cases", "8", "--timeout", "120", "--mem-mb", "4096"])
        .args(["--seed", &seed.to_string()])
        .output()
        .expect("run biofs-fuzz");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "biofs-fuzz failed:\n{text}");
    assert!(text.contains("8 cases"), "{text}");
}
