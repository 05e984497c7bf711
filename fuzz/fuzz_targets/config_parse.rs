//! The config parser with arbitrary text (an operator's typo, a broken
//! file from a template): it must never panic, and every error it returns
//! names a position inside the text.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tapir::northbound::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("/nonexistent/fuzz.toml")) {
        assert!(e.line >= 1, "{e}");
        assert!(e.line <= text.lines().count().max(1) + 1, "{e}");
    }
});
