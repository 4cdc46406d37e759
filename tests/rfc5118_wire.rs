//! RFC 5118 (SIP torture test messages for IPv6) on the wire: one message of our own for each
//! of the RFC's tests (§4.1–§4.10: ten sections, twelve messages, since §4.5 and §4.10 have
//! two each), sent byte for byte to a running gateway (default properties: inbound calls
//! accepted) over UDP and over TCP, the way `tests/rfc4475_wire.rs` does RFC 4475.
//!
//! The messages (`tests/fixtures/rfc5118/*.sip`, described in the README there) keep each
//! test's structure and IPv6 trick with our own Call-IDs, tags and branches and 2001:db8::
//! addresses. The RFC's REGISTERs and BYEs become OPTIONS and INVITEs: the gateway is no
//! registrar and has no dialog for a stray BYE, and those requests would test nothing past
//! the parser. The gateway listens on 127.0.0.1: the IPv6 is in the messages, which is what
//! RFC 5118 is about (parsing), not in the transport.
//!
//! Beyond the status codes, each case checks the final answer: every Via echoed as sent
//! (RFC 3261 §8.2.6.2, whatever form the IPv6 takes), the 400's reason naming the fault, the
//! 488's Warning, and the SDP answer's sections. The README's table is generated from what
//! was observed; the test fails when it is stale (`UPDATE_RFC5118=1 cargo test --test
//! rfc5118_wire` rewrites it).

mod common;

use common::torture::{
    cell, check_readme, over_tcp, over_udp, probe_options, request_uri, Observed, Target,
};
use common::{sdp_sections, Gateway};

/// One message: the RFC section and what RFC 5118 asks, what the gateway does (where the RFC
/// leaves it to the application), the status codes it answers over each transport, a check
/// of its final answer (request, answer) → why not, and for an INVITE it answers, the media
/// the call then has (kind, the far end's RTP address the gateway sends to).
struct Case {
    name: &'static str,
    section: &'static str,
    what: &'static str,
    rfc: &'static str,
    udp: &'static str,
    tcp: &'static str,
    check: fn(&str, &str) -> Result<(), String>,
    media: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "ipv6-good",
        section: "4.1",
        what: "IPv6 reference in the Request-URI, Via and Contact (OPTIONS)",
        rfc: "well formed: parse it (a UA answers OPTIONS 200)",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "ipv6-bad",
        section: "4.2",
        what: "Request-URI `sip:2001:db8::5e10`: IPv6 address without `[...]`",
        rfc: "not well formed: 400 Bad Request",
        udp: "400",
        tcp: "400",
        check: |req, resp| {
            vias_echoed(req, resp)?;
            reason_has(resp, "IPv6")
        },
        media: &[],
    },
    Case {
        name: "port-ambiguous",
        section: "4.3",
        what: "`sip:[2001:db8::5e10:5070]`: the port put inside the brackets",
        rfc: "well formed (the address is 2001:db8::5e10:5070; the meant port is lost); a UA answers 200",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "port-unambiguous",
        section: "4.4",
        what: "`sip:[2001:db8::5e10]:5070`: the port after the `]`",
        rfc: "well formed; a UA answers 200",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "via-received-param-with-delim",
        section: "4.5",
        what: "Via `received=[2001:db8::7:ff]` (with brackets; strictly not RFC 3261), IPv6 From and To (INVITE)",
        rfc: "must be parsed all the same (robustness); the INVITE is answered",
        udp: "100 200",
        tcp: "100 200",
        check: |req, resp| {
            vias_echoed(req, resp)?;
            answer_ports(resp, &[true])
        },
        media: &[("audio", "192.0.2.7:49170")],
    },
    Case {
        name: "via-received-param-no-delim",
        section: "4.5",
        what: "Via `received=2001:db8::7:ff` (no brackets, as RFC 3261 has it)",
        rfc: "well formed: parse it; a UA answers 200",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "ipv6-in-sdp",
        section: "4.6",
        what: "SDP `c=IN IP6 2001:db8::20:1` for audio and video (INVITE)",
        rfc: "well formed. Ours: RTP sockets on IPv4 cannot reach IPv6 media, so 488 with `Warning: 301` rather than a 200 that sends RTP nowhere",
        udp: "100 488",
        tcp: "100 488",
        check: |req, resp| {
            vias_echoed(req, resp)?;
            warning(resp, "301 ")
        },
        media: &[],
    },
    Case {
        name: "mult-ip-in-header",
        section: "4.7",
        what: "three Vias: IPv6 with a port, IPv4, IPv6 with `received=` IPv4 (OPTIONS)",
        rfc: "well formed; the answer carries all three Vias",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "mult-ip-in-sdp",
        section: "4.8",
        what: "audio at `c=IN IP4 192.0.2.30`, video at `c=IN IP6 2001:db8::30` (INVITE)",
        rfc: "well formed. Ours: audio answered, video refused with port 0 (its address is IPv6) and `Warning: 301` on the 200",
        udp: "100 200",
        tcp: "100 200",
        check: |req, resp| {
            vias_echoed(req, resp)?;
            answer_ports(resp, &[true, false])?;
            warning(resp, "301 ")
        },
        media: &[("audio", "192.0.2.30:49170")],
    },
    Case {
        name: "ipv4-mapped-ipv6",
        section: "4.9",
        what: "`[::ffff:192.0.2.40]:19823` in Via, mapped addresses in Contact and `c=IN IP6 ::ffff:192.0.2.41` (INVITE)",
        rfc: "must be parsed. Ours: a mapped address is the IPv4 address it holds, so audio and video are answered",
        udp: "100 200",
        tcp: "100 200",
        check: |req, resp| {
            vias_echoed(req, resp)?;
            answer_ports(resp, &[true, true])
        },
        media: &[("audio", "192.0.2.41:49170"), ("video", "192.0.2.41:49172")],
    },
    Case {
        name: "ipv6-bug-abnf-3-colons",
        section: "4.10",
        what: "`[2001:db8:::192.0.2.50]`: the extra colon RFC 3261's ABNF allows",
        rfc: "tolerate it (parse the reference as if the extra colon were not there); a UA answers 200",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
    Case {
        name: "ipv6-correct-abnf-2-colons",
        section: "4.10",
        what: "`[2001:db8::192.0.2.50]`: the same reference written right",
        rfc: "well formed; a UA answers 200",
        udp: "200",
        tcp: "200",
        check: vias_echoed,
        media: &[],
    },
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/rfc5118/{name}.sip",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every value of header `name` in a message's header block, in order.
fn header_values<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// RFC 3261 §8.2.6.2: the answer's Vias are the request's, in order and as written.
fn vias_echoed(req: &str, resp: &str) -> Result<(), String> {
    let (sent, got) = (header_values(req, "Via"), header_values(resp, "Via"));
    if sent == got {
        Ok(())
    } else {
        Err(format!("Vias sent {sent:?}, answered {got:?}"))
    }
}

fn reason_has(resp: &str, word: &str) -> Result<(), String> {
    let line = resp.lines().next().unwrap_or_default();
    if line.contains(word) {
        Ok(())
    } else {
        Err(format!("reason phrase without {word:?}: {line}"))
    }
}

fn warning(resp: &str, code: &str) -> Result<(), String> {
    let w = header_values(resp, "Warning");
    if w.iter().any(|v| v.starts_with(code)) {
        Ok(())
    } else {
        Err(format!("no Warning {code}…: {w:?}"))
    }
}

/// The SDP answer has one section per offered one; `accepted[i]` says whether section i has
/// a port (answered) or 0 (refused, RFC 3264 §6). Its c= is IPv4, what our sockets use.
fn answer_ports(resp: &str, accepted: &[bool]) -> Result<(), String> {
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let sections = sdp_sections(body);
    let ports: Vec<bool> = sections
        .iter()
        .map(|s| s[0].split_whitespace().nth(1) != Some("0"))
        .collect();
    if ports != accepted {
        return Err(format!(
            "answered sections {ports:?}, want {accepted:?}:\n{body}"
        ));
    }
    if !body.lines().any(|l| l.starts_with("c=IN IP4 ")) {
        return Err(format!("no IPv4 c= line:\n{body}"));
    }
    Ok(())
}

/// The call an INVITE became (its callId is the SIP Call-ID with characters outside
/// `A-Za-z0-9_.-` replaced by `_`): each track's kind and the RTP address the gateway sends to.
async fn call_media(gw: &Gateway, req: &str) -> Vec<(String, String)> {
    let sip_call_id = header_values(req, "Call-ID")[0];
    let call_id: String = sip_call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let call = gw.call(&call_id).await;
    let mut out = Vec::new();
    for leg in call["legs"].as_array().into_iter().flatten() {
        for t in leg["tracks"].as_array().into_iter().flatten() {
            out.push((
                t["kind"].as_str().unwrap_or("?").to_string(),
                t["remoteRtp"].as_str().unwrap_or("none").to_string(),
            ));
        }
    }
    out
}

/// A README cell: the codes and final reason, with the answer's Warning, where the call's
/// RTP went (`media`) and how our BYE was answered when there are.
fn row_cell(seen: &Observed, stream: bool, media: &str) -> String {
    let mut s = cell(seen, stream);
    for w in header_values(&seen.last, "Warning") {
        s.push_str(&format!("; Warning: {}", w.replace('|', "/")));
    }
    s.push_str(media);
    if let Some(bye) = &seen.bye {
        s.push_str(&format!("; BYE: {}", bye.trim_start_matches("SIP/2.0 ")));
    }
    s
}

fn readme_table(rows: &[(String, String)]) -> String {
    let mut out = String::from(
        "| message | RFC 5118 | what it holds | what RFC 5118 asks (ours where it leaves it to the UA) | UDP answer | TCP answer |\n\
         |---|---|---|---|---|---|\n",
    );
    for (c, (udp, tcp)) in CASES.iter().zip(rows) {
        out.push_str(&format!(
            "| `{}` | §{} | {} | {} | {} | {} |\n",
            c.name, c.section, c.what, c.rfc, udp, tcp
        ));
    }
    out
}

const BEGIN: &str = "<!-- rfc5118:begin (generated by tests/rfc5118_wire.rs) -->\n";
const END: &str = "<!-- rfc5118:end -->";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rfc5118_messages_over_udp_and_tcp() {
    assert_eq!(CASES.len(), 12);
    let (mut udp_target, mut tcp_target) = tokio::join!(Target::start(), Target::start());
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for c in CASES {
        let bytes = fixture(c.name);
        let req = String::from_utf8_lossy(&bytes).into_owned();
        let (udp_gw, tcp_gw) = tokio::join!(
            udp_target.for_message(&bytes),
            tcp_target.for_message(&bytes)
        );
        let (udp, tcp) = tokio::join!(over_udp(udp_gw, &bytes), over_tcp(tcp_gw, &bytes));
        eprintln!(
            "{:<28} udp: {:<8} tcp: {:<8} {}",
            c.name,
            udp.codes(),
            tcp.codes(),
            udp.final_line()
        );
        let mut media_seen = [String::new(), String::new()];
        for (i, (transport, seen, want, gw)) in
            [("UDP", &udp, c.udp, udp_gw), ("TCP", &tcp, c.tcp, tcp_gw)]
                .into_iter()
                .enumerate()
        {
            if seen.codes() != want {
                wrong.push(format!(
                    "{} over {transport}: {} (want {want})\n{}",
                    c.name,
                    seen.codes(),
                    seen.last
                ));
                continue;
            }
            if let Err(why) = (c.check)(&req, &seen.last) {
                wrong.push(format!("{} over {transport}: {why}", c.name));
            }
            if seen.last.starts_with("SIP/2.0 2") && request_uri(&bytes).is_some() {
                // The dialog works with the IPv6 in its headers: our BYE (To with the
                // gateway's tag) is matched and answered.
                if seen.bye.as_deref() != Some("SIP/2.0 200 OK") {
                    wrong.push(format!(
                        "{} over {transport}: BYE answered {:?}",
                        c.name, seen.bye
                    ));
                }
                let media = call_media(gw, &req).await;
                let want: Vec<(String, String)> = c
                    .media
                    .iter()
                    .map(|(k, a)| (k.to_string(), a.to_string()))
                    .collect();
                if media != want {
                    wrong.push(format!(
                        "{} over {transport}: media {media:?}, want {want:?}",
                        c.name
                    ));
                }
                let list: Vec<String> = media.iter().map(|(k, a)| format!("{k} {a}")).collect();
                media_seen[i] = format!("; RTP to {}", list.join(", "));
            }
        }
        let [udp_media, tcp_media] = media_seen;
        rows.push((
            row_cell(&udp, false, &udp_media),
            row_cell(&tcp, true, &tcp_media),
        ));
    }
    // The gateways still answer a plain OPTIONS over each transport.
    let udp = over_udp(&udp_target.gw, &probe_options(udp_target.gw.sip_port)).await;
    let tcp = over_tcp(&tcp_target.gw, &probe_options(tcp_target.gw.sip_port)).await;
    assert_eq!((udp.codes().as_str(), tcp.codes().as_str()), ("200", "200"));
    for gw in [&udp_target.gw, &tcp_target.gw] {
        let logs = gw.logs();
        assert!(!logs.contains("panicked"), "{logs}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let table = readme_table(&rows);
    check_readme(BEGIN, END, &table, "UPDATE_RFC5118", "rfc5118_wire");
}
