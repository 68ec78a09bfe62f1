//! The `overlay` binary as a user runs it: `--help`, `--check`, bad configs, `overlay up`.

use std::process::Command;

fn overlay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overlay"))
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = overlay()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
            "--check",
            "up",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("would run").count(), 9, "{stdout}");
}
