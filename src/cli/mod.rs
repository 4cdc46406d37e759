//! The `sipstream` command line over the REST API: `sipstream call start|find|list|...`,
//! `push`, `record`, `siprec`, `stream` and `events` (the server is `sipstream serve`, the
//! default when no command is given). Each command is one or two HTTP requests to the API
//! found at `--api`, else `SIPSTREAM_API`, else http://127.0.0.1:9091; `--json` prints the
//! API's JSON as it came, else a table or `key: value` lines.
//!
//! It is a client only: it knows the API's paths and fields, nothing of the gateway's
//! insides. Exit codes: 0 done, 1 the API answered an error (printed with its status), 2 the
//! API could not be reached or the command line is wrong.

use std::io::Write;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

/// The names that start a CLI command rather than the server.
pub const COMMANDS: &[&str] = &["call", "push", "record", "siprec", "stream", "events"];

/// What a command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// A CLI command (or the CLI's help, or a CLI option without a command).
    Cli,
    /// The gateway; the index of a `serve` word to drop, if there was one.
    Serve(Option<usize>),
}

/// Decides by the first word that is not an option or an option's value: a CLI command,
/// `serve`, or none (the gateway, as `sipstream --config F` always was).
pub fn dispatch(args: &[String]) -> Dispatch {
    let mut i = 0;
    let mut cli_option = false;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--api" | "--api-key" => {
                cli_option = true;
                i += 2;
                continue;
            }
            "--config" | "-c" | "--set" => {
                i += 2;
                continue;
            }
            "--json" | "--help" | "-h" | "help" => return Dispatch::Cli,
            "serve" => return Dispatch::Serve(Some(i)),
            w if COMMANDS.contains(&w) => return Dispatch::Cli,
            w if w.starts_with("--api=") || w.starts_with("--api-key=") => cli_option = true,
            _ => {}
        }
        i += 1;
    }
    if cli_option {
        Dispatch::Cli
    } else {
        Dispatch::Serve(None)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "sipstream",
    about = "Client of a sipstream gateway's REST API (`sipstream serve` runs the gateway)"
)]
pub struct Cli {
    /// The API's base URL.
    #[arg(
        long,
        env = "SIPSTREAM_API",
        default_value = "http://127.0.0.1:9091",
        global = true
    )]
    pub api: String,
    /// An API key (sent as `Authorization: Bearer`), when the gateway has `api_keys`.
    #[arg(long, env = "SIPSTREAM_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Calls: start, find, list, answer, terminate, hold, unhold, dtmf, transfer.
    #[command(subcommand)]
    Call(CallCmd),
    /// RTMP pushes of streams.
    #[command(subcommand)]
    Push(PushCmd),
    /// MP4 recordings of streams.
    #[command(subcommand)]
    Record(RecordCmd),
    /// SIPREC recording sessions of calls.
    #[command(subcommand)]
    Siprec(SiprecCmd),
    /// Streams in the registry.
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Follows the gateway's events (Server-Sent Events) as they happen, one line each.
    Events {
        /// Only the events of this call (repeatable).
        #[arg(long = "call-id")]
        call_id: Vec<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CallCmd {
    /// Places a call (`/call/startup`); with --caller, a two-party call.
    Start(CallStart),
    /// One call (`/call/find`).
    Find { call_id: String },
    /// Every call the gateway knows (`/call/find_all`), or those in one status.
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Answers an inbound call that rings for the API (`/call/answer`, `inbound_answer=api`).
    Answer { call_id: String },
    /// Hangs up (`/call/terminate`).
    Terminate { call_id: String },
    /// Puts a leg (or the call) on hold.
    Hold {
        call_id: String,
        #[arg(long)]
        leg: Option<String>,
    },
    /// Takes a leg (or the call) off hold.
    Unhold {
        call_id: String,
        #[arg(long)]
        leg: Option<String>,
    },
    /// Sends DTMF digits (RFC 4733 events, or SIP INFO with --info).
    Dtmf {
        call_id: String,
        digits: String,
        #[arg(long)]
        info: bool,
    },
    /// Transfers the far end to a target by REFER (blind).
    Transfer {
        call_id: String,
        target: String,
        #[arg(long)]
        leg: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct CallStart {
    /// Who to call: a SIP URI, or a number at --domain.
    #[arg(long)]
    pub callee: String,
    /// Two-party: the first party, called first and bridged with the callee.
    #[arg(long)]
    pub caller: Option<String>,
    /// The call's id (else the gateway makes one).
    #[arg(long = "id")]
    pub call_id: Option<String>,
    /// SIP domain (sipDomain).
    #[arg(long, default_value = "127.0.0.1")]
    pub domain: String,
    /// SIP user (sipLogin).
    #[arg(long, default_value = "sipstream")]
    pub login: String,
    /// Digest user name, if not the login.
    #[arg(long)]
    pub auth_name: Option<String>,
    /// SIP password; from SIPSTREAM_SIP_PASSWORD when not given, so it stays out of `ps`.
    #[arg(long, env = "SIPSTREAM_SIP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Outbound proxy (sipOutboundProxy).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Port of the proxy or domain (sipPort).
    #[arg(long)]
    pub port: Option<u16>,
    /// udp, tcp or tls (sipTransport).
    #[arg(long)]
    pub transport: Option<String>,
    /// REGISTER before calling.
    #[arg(long)]
    pub register: bool,
    /// The stream's name (toStream).
    #[arg(long)]
    pub stream: Option<String>,
    /// Record the call to MP4.
    #[arg(long)]
    pub record: bool,
    /// Offer video (H264) as well.
    #[arg(long)]
    pub video: bool,
}

#[derive(Subcommand, Debug)]
pub enum PushCmd {
    /// Pushes a stream to an RTMP URL (the stream name is appended unless --full-url).
    Start {
        stream: String,
        rtmp_url: String,
        #[arg(long)]
        full_url: bool,
    },
    /// Stops a push by its mediaSessionId.
    Stop { media_session_id: String },
    /// Every push.
    List,
}

#[derive(Subcommand, Debug)]
pub enum RecordCmd {
    /// Starts recording a stream.
    Start { stream: String },
    /// Stops recording a stream.
    Stop { stream: String },
    /// Every recording (active and recent).
    List,
    /// Downloads a recording (to --output, else to its own name here).
    Get {
        file: String,
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SiprecCmd {
    /// Records a call to SRSs (comma-separated URIs, tried in order).
    Start { call_id: String, srs: String },
    /// Stops a call's recording sessions.
    Stop { call_id: String },
    /// Recording sessions of a call, or of every call.
    Find { call_id: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum StreamCmd {
    /// Every live stream.
    List,
    /// One stream.
    Find { name: String },
}

/// What went wrong, and the exit code it means.
#[derive(Debug)]
pub enum CliError {
    /// The API answered with an error status.
    Api { status: u16, body: String },
    /// The API could not be reached, or answered something unreadable.
    Unreachable(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { .. } => 1,
            CliError::Unreachable(_) => 2,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Api { status, body } => {
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                match (v["error"].as_str(), v["message"].as_str()) {
                    (Some(kind), Some(msg)) => write!(f, "{status} {kind}: {msg}"),
                    _ => write!(f, "{status}: {}", body.trim()),
                }
            }
            CliError::Unreachable(e) => write!(f, "{e}"),
        }
    }
}

/// The error of a request that did not reach the API at `url`.
fn unreachable(url: &str) -> impl Fn(reqwest::Error) -> CliError + '_ {
    move |e| CliError::Unreachable(format!("cannot reach the API at {url}: {e}"))
}

struct Client {
    http: reqwest::Client,
    api: String,
    key: Option<String>,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.trim_end_matches('/'))
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    async fn post(&self, method: &str, body: Value) -> Result<Value, CliError> {
        let url = self.url(&format!("/rest-api{method}"));
        let resp = self
            .auth(self.http.post(&url).json(&body))
            .send()
            .await
            .map_err(unreachable(&url))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::Unreachable(format!("{url}: {e}")))?;
        if status >= 400 {
            return Err(CliError::Api { status, body: text });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| CliError::Unreachable(format!("{url}: not JSON ({e}): {text}")))
    }
}

/// Runs one command; what it prints goes to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let client = Client {
        http: reqwest::Client::new(),
        api: cli.api.clone(),
        key: cli.api_key.clone(),
    };
    let json = cli.json;
    let show = |out: &mut dyn Write, v: &Value, table: Option<&[(&str, &str)]>| {
        let text = if json {
            serde_json::to_string_pretty(v).unwrap_or_default()
        } else {
            match (table, v) {
                (Some(cols), Value::Array(rows)) => render_table(cols, rows),
                (Some(cols), Value::Object(_)) => render_table(cols, std::slice::from_ref(v)),
                _ => render_fields(v),
            }
        };
        let _ = writeln!(out, "{}", text.trim_end());
    };
    const CALLS: &[(&str, &str)] = &[
        ("CALL", "callId"),
        ("DIRECTION", "direction"),
        ("STATUS", "status"),
        ("SIP", "sipStatus"),
        ("CALLEE", "callee"),
        ("STREAM", "toStream"),
    ];
    match cli.command {
        Command::Call(c) => match c {
            CallCmd::Start(s) => {
                let v = client.post("/call/startup", start_body(&s)).await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Find { call_id } => {
                let v = client
                    .post("/call/find", json!({ "callId": call_id }))
                    .await?;
                show(out, &v, None);
            }
            CallCmd::List { status } => {
                let body = match status {
                    Some(s) => json!({ "status": s }),
                    None => json!({}),
                };
                let v = client.post("/call/find_all", body).await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Answer { call_id } => {
                let v = client
                    .post("/call/answer", json!({ "callId": call_id }))
                    .await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Terminate { call_id } => {
                let v = client
                    .post("/call/terminate", json!({ "callId": call_id }))
                    .await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Hold { call_id, leg } => {
                let v = client.post("/call/hold", with_leg(call_id, leg)).await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Unhold { call_id, leg } => {
                let v = client.post("/call/unhold", with_leg(call_id, leg)).await?;
                show(out, &v, Some(CALLS));
            }
            CallCmd::Dtmf {
                call_id,
                digits,
                info,
            } => {
                let kind = if info { "INFO" } else { "RFC2833" };
                let v = client
                    .post(
                        "/call/send_dtmf",
                        json!({ "callId": call_id, "dtmf": digits, "type": kind }),
                    )
                    .await?;
                show(out, &v, None);
            }
            CallCmd::Transfer {
                call_id,
                target,
                leg,
            } => {
                let mut body = json!({ "callId": call_id, "target": target });
                if let Some(l) = leg {
                    body["leg"] = json!(l);
                }
                let v = client.post("/call/transfer", body).await?;
                show(out, &v, None);
            }
        },
        Command::Push(p) => {
            const PUSHES: &[(&str, &str)] = &[
                ("SESSION", "mediaSessionId"),
                ("STREAM", "streamName"),
                ("STATUS", "status"),
                ("URL", "rtmpUrl"),
            ];
            let v = match p {
                PushCmd::Start {
                    stream,
                    rtmp_url,
                    full_url,
                } => {
                    client
                        .post(
                            "/push/startup",
                            json!({ "streamName": stream, "rtmpUrl": rtmp_url,
                                    "rtmpTransponderFullUrl": full_url }),
                        )
                        .await?
                }
                PushCmd::Stop { media_session_id } => {
                    client
                        .post(
                            "/push/terminate",
                            json!({ "mediaSessionId": media_session_id }),
                        )
                        .await?
                }
                PushCmd::List => client.post("/push/find_all", json!({})).await?,
            };
            show(out, &v, Some(PUSHES));
        }
        Command::Record(r) => {
            const RECS: &[(&str, &str)] = &[
                ("FILE", "fileName"),
                ("STREAM", "stream"),
                ("STATE", "state"),
                ("MS", "durationMs"),
                ("BYTES", "sizeBytes"),
            ];
            match r {
                RecordCmd::Start { stream } => {
                    let v = client
                        .post("/stream/startRecording", json!({ "name": stream }))
                        .await?;
                    show(out, &v, Some(RECS));
                }
                RecordCmd::Stop { stream } => {
                    let v = client
                        .post("/stream/stopRecording", json!({ "name": stream }))
                        .await?;
                    show(out, &v, Some(RECS));
                }
                RecordCmd::List => {
                    let v = client.post("/recorder/find_all", json!({})).await?;
                    show(out, &v, Some(RECS));
                }
                RecordCmd::Get { file, output } => {
                    let url = client.url(&format!("/recordings/{file}"));
                    let resp = client
                        .auth(client.http.get(&url))
                        .send()
                        .await
                        .map_err(unreachable(&url))?;
                    let status = resp.status().as_u16();
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| CliError::Unreachable(format!("{url}: {e}")))?;
                    if status >= 400 {
                        return Err(CliError::Api {
                            status,
                            body: String::from_utf8_lossy(&bytes).into_owned(),
                        });
                    }
                    // Only a plain file name from the user becomes a local path by default.
                    let path = output.unwrap_or_else(|| {
                        std::path::PathBuf::from(
                            std::path::Path::new(&file)
                                .file_name()
                                .map_or_else(|| "recording.mp4".into(), |n| n.to_owned()),
                        )
                    });
                    std::fs::write(&path, &bytes).map_err(|e| {
                        CliError::Unreachable(format!("cannot write {}: {e}", path.display()))
                    })?;
                    let _ = writeln!(out, "{} bytes -> {}", bytes.len(), path.display());
                }
            }
        }
        Command::Siprec(s) => {
            const SESSIONS: &[(&str, &str)] = &[
                ("CALL", "callId"),
                ("INSTANCE", "instance"),
                ("STATE", "state"),
                ("SERVER", "server"),
                ("PACKETS", "packetsForked"),
            ];
            let v = match s {
                SiprecCmd::Start { call_id, srs } => {
                    client
                        .post("/siprec/start", json!({ "callId": call_id, "srs": srs }))
                        .await?
                }
                SiprecCmd::Stop { call_id } => {
                    client
                        .post("/siprec/stop", json!({ "callId": call_id }))
                        .await?
                }
                SiprecCmd::Find { call_id } => {
                    let body = match call_id {
                        Some(c) => json!({ "callId": c }),
                        None => json!({}),
                    };
                    client.post("/siprec/find", body).await?
                }
            };
            show(out, &v, Some(SESSIONS));
        }
        Command::Stream(s) => {
            let v = match s {
                StreamCmd::List => client.post("/stream/find_all", json!({})).await?,
                StreamCmd::Find { name } => {
                    client.post("/stream/find", json!({ "name": name })).await?
                }
            };
            let rows: Vec<Value> = match &v {
                Value::Array(a) => a.iter().map(stream_row).collect(),
                other => vec![stream_row(other)],
            };
            if json {
                show(out, &v, None);
            } else {
                show(
                    out,
                    &Value::Array(rows),
                    Some(&[
                        ("STREAM", "name"),
                        ("CALL", "callId"),
                        ("TRACKS", "tracks"),
                        ("PACKETS", "packets"),
                        ("READERS", "readers"),
                    ]),
                );
            }
        }
        Command::Events { call_id, count } => {
            follow_events(&client, &call_id, count, json, out).await?;
        }
    }
    Ok(())
}

fn with_leg(call_id: String, leg: Option<String>) -> Value {
    let mut body = json!({ "callId": call_id });
    if let Some(l) = leg {
        body["leg"] = json!(l);
    }
    body
}

/// The `/call/startup` body of `call start`.
fn start_body(s: &CallStart) -> Value {
    let mut b = Map::new();
    let mut put = |k: &str, v: Value| {
        b.insert(k.to_string(), v);
    };
    put("callee", json!(s.callee));
    put("sipDomain", json!(s.domain));
    put("sipLogin", json!(s.login));
    put("sipRegisterRequired", json!(s.register));
    put("record", json!(s.record));
    put("hasVideo", json!(s.video));
    for (k, v) in [
        ("caller", &s.caller),
        ("callId", &s.call_id),
        ("sipAuthenticationName", &s.auth_name),
        ("sipPassword", &s.password),
        ("sipOutboundProxy", &s.proxy),
        ("sipTransport", &s.transport),
        ("toStream", &s.stream),
    ] {
        if let Some(v) = v {
            put(k, json!(v));
        }
    }
    if let Some(p) = s.port {
        put("sipPort", json!(p));
    }
    Value::Object(b)
}

/// A stream in one row: its tracks' codecs, packets, and readers by kind.
fn stream_row(s: &Value) -> Value {
    let tracks = s["tracks"].as_array().cloned().unwrap_or_default();
    let codecs: Vec<String> = tracks
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["leg"].as_str().unwrap_or("?").to_ascii_lowercase(),
                t["codec"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let packets: u64 = tracks.iter().filter_map(|t| t["packets"].as_u64()).sum();
    let readers: Vec<String> = s["readers"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    json!({"name": s["name"], "callId": s["callId"], "tracks": codecs.join(" "),
           "packets": packets, "readers": readers.join(" ")})
}

async fn follow_events(
    client: &Client,
    call_ids: &[String],
    count: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut url = client.url("/events");
    for (i, c) in call_ids.iter().enumerate() {
        let q: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
        url.push_str(if i == 0 { "?callId=" } else { "&callId=" });
        url.push_str(&q);
    }
    let mut resp = client
        .auth(client.http.get(&url))
        .send()
        .await
        .map_err(unreachable(&url))?;
    let status = resp.status().as_u16();
    if status >= 400 {
        let body = resp.text().await.unwrap_or_default();
        return Err(CliError::Api { status, body });
    }
    if !json {
        let _ = writeln!(
            out,
            "{:<12} {:<22} {:<20} {:<20} DETAIL",
            "TIME", "EVENT", "CALL", "STATUS"
        );
        let _ = out.flush();
    }
    let mut buf = String::new();
    let mut seen = 0usize;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CliError::Unreachable(format!("{url}: {e}")))?
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let line = if json {
                data
            } else {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                event_line(&v)
            };
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            seen += 1;
            if count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One event as a table row: time, type, call, status (or event name), the rest.
fn event_line(v: &Value) -> String {
    let ms = v["timestamp"].as_u64().unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[hour]:[minute]:[second].[subsecond digits:3]"
            ))
            .ok()
        })
        .unwrap_or_default();
    let kind = v["type"].as_str().unwrap_or("");
    let call = v["callId"]
        .as_str()
        .or_else(|| v["dlg_id"].as_str())
        .unwrap_or("");
    let status = v["status"]
        .as_str()
        .or_else(|| v["event"].as_str())
        .or_else(|| v["state"].as_str())
        .unwrap_or("");
    let mut detail = Vec::new();
    for k in [
        "sipStatus",
        "reason",
        "leg",
        "digit",
        "streamName",
        "fileName",
    ] {
        match &v[k] {
            Value::Null => {}
            Value::String(s) => detail.push(format!("{k}={s}")),
            other => detail.push(format!("{k}={other}")),
        }
    }
    format!(
        "{t:<12} {kind:<22} {call:<20} {status:<20} {}",
        detail.join(" ")
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows of objects as aligned columns (`cols`: header, field).
fn render_table(cols: &[(&str, &str)], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(_, f)| cell(&r[*f])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |items: Vec<&str>| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(cols.iter().map(|(h, _)| *h).collect())];
    for r in &cells {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// An object as `key: value` lines (nested values as compact JSON).
fn render_fields(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(a) => a.iter().map(render_fields).collect::<Vec<_>>().join("\n\n"),
        other => cell(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_reads_as_the_readme_says() {
        let cli = Cli::try_parse_from([
            "sipstream",
            "--api",
            "http://gw:9091",
            "call",
            "start",
            "--callee",
            "sip:bob@10.0.0.2:5070",
            "--id",
            "c1",
            "--record",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.api, "http://gw:9091");
        let Command::Call(CallCmd::Start(s)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        let body = start_body(&s);
        assert_eq!(body["callee"], "sip:bob@10.0.0.2:5070");
        assert_eq!(body["callId"], "c1");
        assert_eq!(body["record"], true);
        assert!(
            body.get("sipPassword").is_none() || std::env::var("SIPSTREAM_SIP_PASSWORD").is_ok()
        );
        assert!(Cli::try_parse_from(["sipstream", "call", "frobnicate"]).is_err());
        assert!(
            Cli::try_parse_from(["sipstream", "events", "--call-id", "a", "--call-id", "b"])
                .is_ok()
        );
    }

    #[test]
    fn the_server_and_the_cli_are_told_apart() {
        let d = |a: &[&str]| dispatch(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(d(&[]), Dispatch::Serve(None));
        assert_eq!(
            d(&["--config", "call"]),
            Dispatch::Serve(None),
            "a file named call"
        );
        assert_eq!(d(&["--set", "rest_port=1"]), Dispatch::Serve(None));
        assert_eq!(d(&["serve", "--set", "a=b"]), Dispatch::Serve(Some(0)));
        assert_eq!(d(&["--set", "a=b", "serve"]), Dispatch::Serve(Some(2)));
        assert_eq!(d(&["call", "list"]), Dispatch::Cli);
        assert_eq!(d(&["--json", "call", "find", "x"]), Dispatch::Cli);
        assert_eq!(d(&["--api", "http://gw", "events"]), Dispatch::Cli);
        assert_eq!(d(&["--api", "http://gw"]), Dispatch::Cli);
        assert_eq!(d(&["--help"]), Dispatch::Cli);
    }

    #[test]
    fn tables_and_errors_read_well() {
        let rows = vec![
            json!({"callId": "c1", "status": "ESTABLISHED"}),
            json!({"callId": "long-call-id", "status": null}),
        ];
        let t = render_table(&[("CALL", "callId"), ("STATUS", "status")], &rows);
        assert_eq!(
            t,
            "CALL          STATUS\nc1            ESTABLISHED\nlong-call-id  -"
        );
        let e = CliError::Api {
            status: 404,
            body: r#"{"error":"not_found","message":"no such call"}"#.into(),
        };
        assert_eq!(e.to_string(), "404 not_found: no such call");
        assert_eq!(e.exit_code(), 1);
        let line = event_line(&json!({"type": "CallStatusEvent", "callId": "c1",
            "status": "FINISH", "sipStatus": 200, "timestamp": 0}));
        assert!(
            line.contains("CallStatusEvent")
                && line.contains("FINISH")
                && line.contains("sipStatus=200"),
            "{line}"
        );
    }
}
