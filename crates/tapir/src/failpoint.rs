//! Failpoints, for the lab tests only (the `failpoints` feature; other
//! builds have none). `TAPIR_FAILPOINT` holds `NAME:ARG` entries separated
//! by commas:
//! - `panic-on-prefix:P`: a session task panics on an announcement of P
//!   (`peer/core.rs`);
//! - `kernel-refuse:PREFIX:N`: the first N installs of PREFIX are refused
//!   by the kernel (`southbound/kernel.rs`);
//! - `rib-stall:FILE`: the Loc-RIB thread stops before its next batch
//!   while FILE exists (the watchdog's test).

/// The argument of failpoint `name`, if `TAPIR_FAILPOINT` sets it.
pub fn arg(name: &str) -> Option<String> {
    find(&std::env::var("TAPIR_FAILPOINT").ok()?, name)
}

fn find(spec: &str, name: &str) -> Option<String> {
    spec.split(',')
        .find_map(|e| e.strip_prefix(name)?.strip_prefix(':').map(str::to_string))
}

/// `rib-stall:FILE`: waits while FILE exists (read once).
pub fn rib_stall() {
    static FILE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(f) = FILE.get_or_init(|| arg("rib-stall")) {
        let mut said = false;
        while std::path::Path::new(f).exists() {
            if !said {
                tracing::warn!(file = %f, "failpoint: the Loc-RIB stalls while the file exists");
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_are_found_by_name_among_others() {
        let spec = "kernel-refuse:2001:db8::/64:3,rib-stall:/tmp/x";
        assert_eq!(
            super::find(spec, "kernel-refuse").as_deref(),
            Some("2001:db8::/64:3")
        );
        assert_eq!(super::find(spec, "rib-stall").as_deref(), Some("/tmp/x"));
        assert_eq!(super::find(spec, "rib"), None);
    }
}
