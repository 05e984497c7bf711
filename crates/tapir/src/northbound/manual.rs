//! The manual beyond what clap writes from the CLI: tapir(1)'s FILES,
//! SIGNALS and SEE ALSO sections, and tapir.toml(5), made from
//! docs/config.md so that the reference has one source.

/// docs/config.md, the configuration reference.
const CONFIG_MD: &str = include_str!("../../../../docs/config.md");

/// The sections appended to clap's tapir(1).
pub fn tapir_1_sections() -> String {
    r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the configuration file, as \fBtapir reload\fR does (and \fBsystemctl reload tapir\fR).
.TP
\fBSIGTERM\fR
Stop. With a graceful-restart time above 0 and a state directory (the packaged unit has both), a graceful stop (RFC 4724): no NOTIFICATION, the kernel keeps tapir's routes and the neighbors keep them as stale until tapir is back. Otherwise as \fBtapir stop\fR.
.TP
\fBSIGINT\fR
Stop for good: a Cease to every neighbor, tapir's routes out of the kernel (as \fBtapir stop\fR).
.SH FILES
.TP
\fI/etc/tapir/tapir.toml\fR
The configuration (\fBtapir.toml\fR(5)); the package installs the commented example here.
.TP
\fI/run/tapir/tapir.sock\fR
The control socket (\fB\-\-socket\fR), mode 0660, group \fBtapir\fR.
.TP
\fI/var/lib/tapir\fR
The state directory (\fB\-\-state\-dir\fR): VM registrations (\fIvms.json\fR) and the graceful-restart marker.
.TP
\fI/usr/share/doc/tapir/examples/\fR
\fIhypervisor.toml\fR and \fIguest.toml\fR, complete configurations with comments.
.TP
\fI/usr/share/tapir/contrib/\fR
Ganeti and libvirt hooks, Prometheus alert rules with their tests, a Grafana dashboard, top-of-rack snippets for drains.
.TP
\fI/usr/share/doc/tapir/\fR
The operator guide and the other documentation.
.SH SEE ALSO
\fBtapir.toml\fR(5), \fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBbirdc\fR(8)
"#
    .to_string()
}

/// Text for roff: backslashes escaped, `code` in bold, a line that would
/// start with a control character guarded.
fn roff(text: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '`' => {
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            '-' => out.push_str("\\-"),
            // Anything beyond ASCII by its code point (groff's \[uXXXX]),
            // so that the page needs no preprocessor.
            c if !c.is_ascii() => out.push_str(&format!("\\[u{:04X}]", c as u32)),
            _ => out.push(c),
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// The cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// tapir.toml(5): docs/config.md as a man page. Sections become `.SH`
/// and `.SS`, each table row of a key an entry (`.TP`) with its type,
/// default and meaning, code blocks stay as they are.
pub fn tapir_toml_5() -> String {
    let mut out = String::from(
        ".TH TAPIR.TOML 5 \"\" \"tapir\" \"File formats\"\n.SH NAME\ntapir.toml \\- the configuration file of tapir\n",
    );
    let lines: Vec<&str> = CONFIG_MD.lines().collect();
    let mut code = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.starts_with("```") {
            out.push_str(if code { ".fi\n" } else { ".nf\n" });
            code = !code;
            continue;
        }
        if code {
            out.push_str(&roff(line));
            out.push('\n');
            continue;
        }
        if line.starts_with("# ") {
            out.push_str(".SH DESCRIPTION\n");
        } else if let Some(h) = line.strip_prefix("## ") {
            out.push_str(&format!(".SH \"{}\"\n", roff(h).to_uppercase()));
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS \"{}\"\n", roff(h)));
        } else if line.starts_with('|') {
            // A header row is the one before the `|---|` line.
            if lines.get(i).is_some_and(|n| n.starts_with("|--")) {
                i += 1;
                continue;
            }
            let c = cells(line);
            match c.as_slice() {
                [key, ty, default, meaning] => out.push_str(&format!(
                    ".TP\n{}\n{}; default: {}.\n{}\n",
                    roff(key),
                    roff(ty),
                    roff(default),
                    roff(meaning)
                )),
                [first, rest @ ..] => out.push_str(&format!(
                    ".TP\n{}\n{}\n",
                    roff(first),
                    rest.iter()
                        .map(|c| roff(c))
                        .collect::<Vec<_>>()
                        .join(" \\(em ")
                )),
                [] => {}
            }
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else {
            out.push_str(&roff(line));
            out.push('\n');
        }
    }
    out.push_str(".SH SEE ALSO\n\\fBtapir\\fR(1)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_key_is_an_entry_of_tapir_toml_5() {
        let page = tapir_toml_5();
        let keys: Vec<&str> = CONFIG_MD
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| cells(l).first().copied())
            .collect();
        assert!(keys.len() > 100, "{}", keys.len());
        for k in keys {
            assert!(page.contains(&format!(".TP\n{}\n", roff(k))), "{k} missing");
        }
        // Every section of the reference is a section of the page.
        for h in CONFIG_MD.lines().filter_map(|l| l.strip_prefix("## ")) {
            assert!(
                page.contains(&format!(".SH \"{}\"", roff(h).to_uppercase())),
                "{h}"
            );
        }
        // No line starts a request it does not mean to.
        for l in page.lines() {
            if let Some(r) = l.strip_prefix('.') {
                let req = r.split_whitespace().next().unwrap_or("");
                assert!(
                    ["TH", "SH", "SS", "TP", "PP", "nf", "fi"].contains(&req),
                    "{l}"
                );
            }
        }
    }

    #[test]
    fn roff_escapes_what_roff_would_read() {
        assert_eq!(roff("`a-b` c\\d"), "\\fBa\\-b\\fR c\\ed");
        assert_eq!(roff(".start"), "\\&.start");
        assert_eq!(roff("a → b"), "a \\[u2192] b");
    }

    #[test]
    fn tapir_1_has_signals_and_files() {
        let s = tapir_1_sections();
        for want in [
            ".SH SIGNALS",
            "SIGHUP",
            "SIGTERM",
            ".SH FILES",
            "/etc/tapir/tapir.toml",
            "tapir.toml\\fR(5)",
        ] {
            assert!(s.contains(want), "{want}");
        }
    }
}
