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

/// A file in a directory of its own, removed with it when dropped (the
/// tests run in parallel).
struct Temp(std::path::PathBuf);

impl std::ops::Deref for Temp {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp(name: &str, text: &str) -> Temp {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tapir-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    Temp(p)
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
fn check_accepts_the_guest_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/guest.toml");
    let (ok, out, err) = tapir(&["check", "--config", example]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok (guest role: router id 10.192.24.11, AS 64613, gateway from the default routes, 1 services, 0 neighbors)"),
        "{out}"
    );
}

/// Mistakes in the guest role's sections, each named with its place.
#[test]
fn check_reports_guest_mistakes() {
    let head = "router-id = \"10.192.24.11\"\nlocal-as = 64613\n[gateway]\nremote-as = 64612\n";
    let cases = [
        (
            "[[service]]\nprefixes = [\"10.3.0.1/32\"]\ncheck = [{ type = \"ping\" }]\n",
            "7:19: error: service `service1`: check: unknown type `ping` (expected `command`, `tcp`, `http` or `dns`)",
        ),
        (
            "[[service]]\nprefixes = [\"10.3.0.1/32\"]\ncheck = [{ type = \"tcp\", url = \"http://10.3.0.1/\" }]\n",
            "7:10: error: service `service1`: check: `url` does not apply to a `tcp` check",
        ),
        (
            "[[service]]\nprefixes = [\"10.3.0.1/32\"]\ncheck = [{ type = \"http\", url = \"http://dns.example/\" }]\n",
            "checks do not resolve names",
        ),
        (
            "[[service]]\nprefixes = [\"10.3.0.0/24\"]\nrequire-address = true\n",
            "6:12: error: service `service1`: require-address needs host prefixes (/32, /128); 10.3.0.0/24 is not one",
        ),
        (
            "[[service]]\nprefixes = [\"10.3.0.1/32\"]\n",
            "no check and no require-address",
        ),
        (
            "[[service]]\nprefixes = [\"10.3.0.1/32\"]\nrequire-address = true\nrise = 0\n",
            "8:8: error: service `service1`: rise: 1 to 100",
        ),
        (
            "addresses = [\"fe80::1\"]\n",
            "5:14: error: gateway.addresses: fe80::1 is link-local: set gateway.interface too",
        ),
        (
            "[[group]]\nname = \"vms\"\ninterfaces = [\"tap*\"]\nranges = [\"10.0.0.0/8\"]\nremote-as = \"external\"\n",
            "cannot be in one config",
        ),
    ];
    for (i, (tail, want)) in cases.iter().enumerate() {
        let p = temp(&format!("guest{i}.toml"), &format!("{head}{tail}"));
        let (ok, _, err) = tapir(&["check", "--config", p.to_str().unwrap()]);
        assert!(!ok, "{tail}");
        assert!(err.contains(want), "{tail}\n{err}");
        assert!(err.starts_with(&format!("{}:", p.display())), "{err}");
    }
}

#[test]
fn check_warns_of_an_external_neighbor_without_export() {
    let head = "router-id = \"10.0.0.1\"\nlocal-as = 64612\n\n";
    let ebgp = "[[neighbor]]\nname = \"tor\"\naddress = \"10.0.0.2\"\nremote-as = 65020\n";
    let p = temp("rfc8212.toml", &format!("{head}{ebgp}"));
    let (ok, _, err) = tapir(&["check", "--config", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "warning: neighbor `tor`: no export policy, so nothing is sent to it (RFC 8212)"
        ),
        "{err}"
    );
    // With a policy, or an internal neighbor: no warning.
    let with = format!("{head}{ebgp}export = \"OUT\"\n\n[policy.OUT]\ndefault = \"accept\"\n");
    let ibgp = format!("{head}[[neighbor]]\naddress = \"10.0.0.2\"\nremote-as = 64612\n");
    for (i, text) in [with, ibgp].iter().enumerate() {
        let p = temp(&format!("rfc8212-{i}.toml"), text);
        let (ok, _, err) = tapir(&["check", "--config", p.to_str().unwrap()]);
        assert!(ok && !err.contains("warning"), "{text}\n{err}");
    }
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
    assert!(
        man.contains(".SH SIGNALS") && man.contains(".SH FILES"),
        "{man}"
    );
    // tapir.toml(5), from docs/config.md.
    let (ok, page, err) = tapir(&["man", "--config"]);
    assert!(ok, "{err}");
    assert!(page.starts_with(".TH TAPIR.TOML 5"), "{page}");
    assert!(page.contains(".TP\n\\fBrouter\\-id\\fR\n"), "{page}");
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

/// Unambiguous abbreviations reach the command they name (here `show
/// peers`, which then finds no daemon); an ambiguous one is refused with
/// the candidates.
#[test]
fn abbreviations_that_name_one_command() {
    for args in [["sh", "pe"], ["show", "peers"], ["sho", "pe"]] {
        let mut a = vec!["--socket", "/nonexistent/t.sock"];
        a.extend(args);
        let (ok, _, err) = tapir(&a);
        assert!(!ok);
        assert!(
            err.contains("cannot reach tapir at /nonexistent/t.sock"),
            "{args:?}: {err}"
        );
    }
    // `show pee`/`show peer`: `peer` is a command of its own, and wins.
    let (ok, _, err) = tapir(&["--socket", "/nonexistent/t.sock", "sh", "peer", "x"]);
    assert!(!ok && err.contains("cannot reach tapir"), "{err}");
    // `s` is show or stop; `show r` is routes or rib.
    let (ok, _, err) = tapir(&["s", "peers"]);
    assert!(!ok && !err.contains("cannot reach"), "{err}");
    let (ok, _, err) = tapir(&["show", "r"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("routes") && err.contains("rib"),
        "an ambiguous abbreviation names its candidates: {err}"
    );
}

/// A daemon that takes the connection but never answers: the CLI gives
/// up after --timeout with an error that says so, instead of hanging.
#[test]
fn a_daemon_that_does_not_answer_times_out() {
    let dir = temp("placeholder", "");
    let sock = dir.parent().unwrap().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accept and hold the connections, never answering.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(1) {
            conns.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
        drop(conns);
    });
    let s = sock.to_str().unwrap();
    let (ok, _, err) = tapir(&["--socket", s, "--timeout", "0.5", "show", "status"]);
    assert!(!ok);
    assert!(
        err.contains("no answer from tapir at") && err.contains("within 0.5 s"),
        "{err}"
    );
    let (ok, _, err) = tapir(&["--socket", s, "--timeout", "0", "show", "status"]);
    assert!(
        !ok && err.contains("--timeout") && err.contains("more than 0"),
        "{err}"
    );
    held.join().unwrap();
}
