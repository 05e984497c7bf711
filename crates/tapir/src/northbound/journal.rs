//! Native journald logging, used when tapir runs under systemd (its
//! journal socket present and `$JOURNAL_STREAM` set): one datagram per
//! event in the journal's native protocol, with the priority from the
//! level and every field of the event and of its spans as a journal field
//! of its own — `PEER`, `ADDRESS`, `INTERFACE`, `VM`, `PREFIX`, `REASON`
//! … — so that `journalctl -u tapir PEER=tor-v4` shows one session's
//! lines. Field names are upper-cased, anything but letters, digits and
//! `_` becomes `_` (journald drops other names).

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Where journald listens for native messages.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The layer: a socket to journald.
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// The journal at `path`, when it is there to log to.
    pub fn connect(path: &Path) -> std::io::Result<Journal> {
        std::fs::metadata(path)?;
        Ok(Journal {
            sock: UnixDatagram::unbound()?,
            path: path.to_path_buf(),
        })
    }

    /// One entry. Journald away: nothing (logging never stops the
    /// daemon); values are cut at [`MAX_VALUE`], so an entry fits a
    /// datagram.
    fn send(&self, msg: &[u8]) {
        let _ = self.sock.send_to(msg, &self.path);
    }
}

/// syslog priorities (journald's PRIORITY): error 3, warning 4, info 6,
/// debug and trace 7.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// A journal field name from a tracing field's.
fn field_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    // No leading `_` (trusted fields) or digit, at most 64 characters.
    let trimmed = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    let mut n: String = trimmed.chars().take(64).collect();
    if n.is_empty() {
        n = "FIELD".into();
    }
    n
}

/// A field's value is cut at this many bytes.
const MAX_VALUE: usize = 4096;

/// Appends one field in the native protocol: `NAME=value\n`, or for a
/// value with a newline `NAME\n`, its length (64-bit little endian), the
/// value and `\n`. A value past [`MAX_VALUE`] is cut at a character.
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    let mut end = value.len().min(MAX_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value[..end];
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// The fields of a span or an event, in order.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.0.push((field.name().to_string(), s));
    }
}

impl<S> tracing_subscriber::Layer<S> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<Fields>() {
                values.record(f);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut buf = Vec::with_capacity(256);
        let meta = event.metadata();
        put(&mut buf, "PRIORITY", priority(meta.level()));
        put(&mut buf, "SYSLOG_IDENTIFIER", "tapir");
        put(&mut buf, "TARGET", meta.target());
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The spans' fields (the session's: peer, address, interface),
        // outermost first, then the event's own. MESSAGE reads as the
        // text log's line does: the message, then every field.
        if let Some(scope) = ctx.event_scope(event) {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    spans.extend(f.0.iter().filter(|(_, v)| !v.is_empty()).cloned());
                }
            }
            fields.0.splice(0..0, spans);
        }
        let mut message = String::new();
        let mut rest = String::new();
        for (k, v) in &fields.0 {
            if k == "message" {
                message = v.clone();
            } else {
                let _ = write!(rest, " {k}={v}");
                put(&mut buf, &field_name(k), v);
            }
        }
        put(&mut buf, "MESSAGE", &format!("{message}{rest}"));
        self.send(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_what_journald_keeps() {
        assert_eq!(field_name("peer"), "PEER");
        assert_eq!(field_name("kind.name"), "KIND_NAME");
        assert_eq!(field_name("_secret"), "SECRET");
        assert_eq!(field_name("9lives"), "LIVES");
        assert_eq!(field_name("_"), "FIELD");
        assert_eq!(field_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn values_with_newlines_are_length_prefixed() {
        let mut b = Vec::new();
        put(&mut b, "PEER", "tor-v4");
        put(&mut b, "MESSAGE", "a\nb");
        let mut want = b"PEER=tor-v4\nMESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(b, want);
    }

    #[test]
    fn long_values_are_cut_at_a_character() {
        let mut b = Vec::new();
        put(&mut b, "MESSAGE", &"é".repeat(5000));
        let value = &b[b"MESSAGE=".len()..b.len() - 1];
        assert_eq!(value.len(), MAX_VALUE);
        assert!(std::str::from_utf8(value).is_ok());
    }
}
