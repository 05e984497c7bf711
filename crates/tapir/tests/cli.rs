//! The command line as an operator meets it: `check` errors with file, line
//! and column; `--socket` accepted before or after the subcommand; a clear
//! error when no daemon listens.

use std::process::Command;

const TAPIR: &str = env!("CARGO_BIN_EXE_tapir");

fn tapir(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(TAPIR).args(args).output().expect("run tapir");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tapir-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_example() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/hypervisor.toml"
    );
    let (ok, out, err) = tapir(&["check", "--config", example]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok (router id 10.192.21.6, AS 64612, 2 neighbors, 1 VM groups, 1 VMs in the inventory)"),
        "{out}"
    );
}

#[test]
fn check_reports_file_line_and_column() {
    let p = temp(
        "bad.toml",
        "router-id = \"10.0.0.1\"\nlocal-as = 64612\n\n[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = 65020\nhold-time = 2\n",
    );
    let (ok, _, err) = tapir(&["check", "--config", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.starts_with(&format!("{}:7:13: error: hold-time", p.display())),
        "{err}"
    );
    let p = temp("syntax.toml", "router-id = \"10.0.0.1\"\nlocal-as = = 1\n");
    let (ok, _, err) = tapir(&["check", "--config", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.starts_with(&format!("{}:2:", p.display())), "{err}");
    let (ok, _, err) = tapir(&["check", "--config", "/nonexistent/tapir.toml"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/tapir.toml: error: cannot read"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_before_starting() {
    let p = temp("bad-run.toml", "router-id = \"10.0.0.1\"\nlocal-as = 0\n");
    let sock = p.with_extension("sock");
    let (ok, _, err) = tapir(&[
        "run",
        "--config",
        p.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains(":2:12: error: local-as"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn socket_option_before_or_after_the_subcommand() {
    for args in [
        ["--socket", "/nonexistent/t.sock", "show", "peers"],
        ["show", "peers", "--socket", "/nonexistent/t.sock"],
    ] {
        let (ok, _, err) = tapir(&args);
        assert!(!ok);
        assert!(
            err.contains("cannot reach tapir at /nonexistent/t.sock"),
            "{err}"
        );
    }
}

/// The man page and the completions come from the CLI definition, so they
/// name every subcommand there is.
#[test]
fn man_page_and_completions_cover_the_cli() {
    let (ok, man, err) = tapir(&["man"]);
    assert!(ok, "{err}");
    assert!(man.contains(".TH tapir 1"), "{man}");
    let (ok, bash, _) = tapir(&["completions", "bash"]);
    assert!(ok);
    for sub in [
        "run",
        "check",
        "show",
        "reload",
        "stop",
        "drain",
        "undrain",
        "vm",
        "completions",
        "man",
    ] {
        assert!(man.contains(sub), "man page lacks {sub}");
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    for what in ["status", "peers", "peer", "routes", "rib", "vms", "bfd"] {
        assert!(bash.contains(what), "bash completion lacks show {what}");
    }
    let (ok, _, err) = tapir(&["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "{err}");
}
