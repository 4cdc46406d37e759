//! The properties file and what overrides it: the input is `file NUL environment NUL
//! arguments`. The file goes through `parse_properties`, its pairs into `Config::load` as
//! `--set key=value` (the same `set_key` and checks as the file), with `SIPSTREAM_*`
//! variables from the `NAME=value` lines of the second part; the third part's lines are
//! command-line arguments.
//!
//! Properties: nothing panics; parsed keys and values are trimmed single lines and keys hold
//! no `=`. Not fed: `hold_music_file` and `--config`, which name files to read (an operator's
//! choice, not input; `/dev/zero` would only measure the disk).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::config::{parse_properties, Config};

fn reads_a_file(key_or_arg: &str) -> bool {
    let k = key_or_arg.trim();
    k == "hold_music_file" || k == "-c" || k.starts_with("--config")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (file, env, args) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );

    let pairs = match parse_properties(file, "fuzz.properties") {
        Ok(p) => p,
        Err(e) => {
            assert!(e.to_string().contains("fuzz.properties"), "{e}");
            Vec::new()
        }
    };
    for (k, v) in &pairs {
        assert_eq!(k.trim(), k);
        assert_eq!(v.trim(), v);
        assert!(!k.contains(['=', '\n', '\r']) && !v.contains(['\n', '\r']));
    }
    let env: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .filter(|(n, _)| !n.ends_with("HOLD_MUSIC_FILE"))
            .map(|(_, v)| v.to_string())
    };
    let set_args: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| !reads_a_file(k))
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect();
    if let Err(e) = Config::load(set_args, lookup) {
        assert!(!e.to_string().is_empty());
    }

    let raw: Vec<String> = args.lines().map(str::to_string).collect();
    if !raw
        .iter()
        .any(|a| reads_a_file(a) || a.contains("hold_music_file"))
    {
        let _ = Config::load(raw, lookup);
    }
});
