//! Recording file names from a template (`record_file_template`-style property).
//!
//! Placeholders: `{streamName}`, `{callId}`, `{mediaSessionId}`, `{startTime}` (UTC,
//! `YYYYMMDD-HHMMSS`). The result is one bare file name: every character outside
//! `[A-Za-z0-9_.-]` (path separators included) becomes `_`, leading dots are removed, so user
//! input (stream names, call ids, the template itself) cannot leave the recording directory or
//! make hidden files.

use time::OffsetDateTime;

pub const DEFAULT_TEMPLATE: &str = "{streamName}-{startTime}";
const MAX_STEM: usize = 200;

#[derive(Debug, Clone)]
pub struct NameVars<'a> {
    pub stream_name: &'a str,
    pub call_id: Option<&'a str>,
    pub media_session_id: Option<&'a str>,
    pub start: OffsetDateTime,
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn compact_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The file name (with `.mp4`) for `template`; an empty template means the default.
pub fn file_name(template: &str, vars: &NameVars<'_>) -> String {
    let template = if template.trim().is_empty() {
        DEFAULT_TEMPLATE
    } else {
        template
    };
    let stem = template
        .replace("{streamName}", vars.stream_name)
        .replace("{callId}", vars.call_id.unwrap_or("nocall"))
        .replace(
            "{mediaSessionId}",
            vars.media_session_id.unwrap_or("nosession"),
        )
        .replace("{startTime}", &compact_utc(vars.start));
    let mut clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while clean.contains("..") {
        clean = clean.replace("..", "_");
    }
    let clean = clean.trim_start_matches('.');
    let mut clean: String = clean.chars().take(MAX_STEM).collect();
    if clean.is_empty() {
        clean = "recording".to_owned();
    }
    if !clean.ends_with(".mp4") {
        clean.push_str(".mp4");
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(stream: &'a str, call: Option<&'a str>) -> NameVars<'a> {
        NameVars {
            stream_name: stream,
            call_id: call,
            media_session_id: Some("ms1"),
            start: time::macros::datetime!(2024-03-05 07:08:09 UTC),
        }
    }

    #[test]
    fn default_and_placeholders() {
        assert_eq!(file_name("", &vars("s1", None)), "s1-20240305-070809.mp4");
        assert_eq!(
            file_name("{callId}_{mediaSessionId}", &vars("s1", Some("c-9"))),
            "c-9_ms1.mp4"
        );
    }

    #[test]
    fn no_traversal_or_hidden_files() {
        for (t, s, c) in [
            ("{callId}", "s", Some("../../etc/passwd")),
            ("../{streamName}", "x", None),
            ("/abs/{callId}", "x", Some("..")),
            ("{callId}", "x", Some("a\\b\0c")),
            ("{callId}", "x", Some("")),
        ] {
            let n = file_name(t, &vars(s, c));
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.contains(".."),
                "{n}"
            );
            assert!(!n.starts_with('.') && n.ends_with(".mp4"), "{n}");
            assert_eq!(std::path::Path::new(&n).components().count(), 1, "{n}");
        }
    }
}
