//! RFC 4475 on the wire: each of the 49 torture messages is sent, byte for byte, to a running
//! gateway (default properties: inbound calls accepted) over UDP and over TCP, and what comes
//! back is compared with what RFC 4475 asks of an endpoint. The README's table of all 49 is
//! generated from what was observed here; the test fails when the README is stale
//! (`UPDATE_RFC4475=1 cargo test --test rfc4475_wire` rewrites it).
//!
//! Each transport gets its own gateway: the same message sent twice to one gateway would be a
//! retransmission of the first, absorbed by its server transaction. For the same reason a
//! message whose transaction key an earlier message already used (several torture messages
//! share `branch=z9hG4bKkdjuw` and a sent-by) goes to a fresh gateway.

mod common;

use common::torture::{cell, check_readme, over_tcp, over_udp, probe_options, Target};

/// One torture message: what RFC 4475 expects of an endpoint, and what the gateway answers
/// over each transport (status codes in order; `closed` when it closes the connection after;
/// `-` for nothing).
struct Case {
    name: &'static str,
    section: &'static str,
    rfc: &'static str,
    udp: &'static str,
    tcp: &'static str,
}

const fn case(
    name: &'static str,
    section: &'static str,
    rfc: &'static str,
    udp: &'static str,
    tcp: &'static str,
) -> Case {
    Case {
        name,
        section,
        rfc,
        udp,
        tcp,
    }
}

const CASES: &[Case] = &[
    case(
        "wsinv",
        "3.1.1.1",
        "well formed (To tag: a dialog we do not have)",
        "481",
        "481",
    ),
    case(
        "intmeth",
        "3.1.1.2",
        "well formed; an endpoint answers 501",
        "501",
        "501",
    ),
    case(
        "esc01",
        "3.1.1.3",
        "well formed (INVITE)",
        "100 200",
        "100 200",
    ),
    case(
        "escnull",
        "3.1.1.4",
        "well formed (REGISTER; 405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "esc02",
        "3.1.1.5",
        "well formed; an endpoint answers 501",
        "501",
        "501",
    ),
    case("lwsdisp", "3.1.1.6", "well formed (OPTIONS)", "200", "200"),
    case(
        "longreq",
        "3.1.1.7",
        "well formed (INVITE)",
        "100 200",
        "100 200",
    ),
    case(
        "dblreq",
        "3.1.1.8",
        "REGISTER answered, trailing datagram octets ignored",
        "405",
        "405 100 488 closed",
    ),
    case("semiuri", "3.1.1.9", "well formed (OPTIONS)", "200", "200"),
    case(
        "transports",
        "3.1.1.10",
        "well formed (OPTIONS)",
        "200",
        "200",
    ),
    case(
        "mpart01",
        "3.1.1.11",
        "well formed (MESSAGE; multipart/signed body)",
        "405",
        "405",
    ),
    case(
        "unreason",
        "3.1.1.12",
        "well-formed response (matches nothing: dropped)",
        "-",
        "-",
    ),
    case(
        "noreason",
        "3.1.1.13",
        "well-formed response (matches nothing: dropped)",
        "-",
        "-",
    ),
    case("badinv01", "3.1.2.1", "400", "400", "400"),
    case(
        "clerr",
        "3.1.2.2",
        "UDP: 400; TCP: wait for the body, close if none comes",
        "400",
        "-",
    ),
    case(
        "ncl",
        "3.1.2.3",
        "an error; TCP: close the connection",
        "400",
        "400 closed",
    ),
    case("scalar02", "3.1.2.4", "400 (CSeq)", "400", "400"),
    case("scalarlg", "3.1.2.5", "response: discard", "-", "-"),
    case("quotbal", "3.1.2.6", "400", "400", "400"),
    case("ltgtruri", "3.1.2.7", "400", "400", "400"),
    case("lwsruri", "3.1.2.8", "400", "400", "400"),
    case(
        "lwsstart",
        "3.1.2.9",
        "may be rejected as malformed",
        "400",
        "400",
    ),
    case(
        "trws",
        "3.1.2.10",
        "may be rejected as malformed",
        "400",
        "400",
    ),
    case("escruri", "3.1.2.11", "400 acceptable", "400", "400"),
    case(
        "baddate",
        "3.1.2.12",
        "accept unless Date matters (INVITE)",
        "100 200",
        "100 200",
    ),
    case("regbadct", "3.1.2.13", "400", "400", "400"),
    case("badaspec", "3.1.2.14", "400", "400", "400"),
    case(
        "baddn",
        "3.1.2.15",
        "400 (no empty line ends it: a stream waits)",
        "400",
        "-",
    ),
    case("badvers", "3.1.2.16", "505", "505", "505"),
    case("mismatch01", "3.1.2.17", "400", "400", "400"),
    case(
        "mismatch02",
        "3.1.2.18",
        "501 (400 acceptable)",
        "501",
        "501",
    ),
    case("bigcode", "3.1.2.19", "response: drop", "-", "-"),
    case(
        "badbranch",
        "3.2.1",
        "400, or RFC 2543 transaction matching",
        "200",
        "200",
    ),
    case("insuf", "3.3.1", "400", "400", "400"),
    case("unkscm", "3.3.2", "416", "416", "416"),
    case("novelsc", "3.3.3", "416 (or 404)", "416", "416"),
    case(
        "unksm2",
        "3.3.4",
        "REGISTER: not a registrar (405)",
        "405",
        "405",
    ),
    case("bext01", "3.3.5", "420 with Unsupported", "420", "420"),
    case("invut", "3.3.6", "415", "415", "415"),
    case(
        "regaut01",
        "3.3.7",
        "405 from a non-registrar",
        "405",
        "405",
    ),
    case("multi01", "3.3.8", "400", "400", "400"),
    case(
        "mcl01",
        "3.3.9",
        "an error; TCP: close the connection",
        "400",
        "400 closed",
    ),
    case("bcast", "3.3.10", "response: discard", "-", "-"),
    case(
        "zeromf",
        "3.3.11",
        "endpoint: process normally (OPTIONS)",
        "200",
        "200",
    ),
    case(
        "cparam01",
        "3.3.12",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "cparam02",
        "3.3.13",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "regescrt",
        "3.3.14",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case("sdp01", "3.3.15", "406 with Warning (or 400)", "406", "406"),
    case(
        "inv2543",
        "3.4.1",
        "accepted (RFC 2543 INVITE; UDP only)",
        "100 200",
        "400 closed",
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/rfc4475/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn readme_table(rows: &[(String, String)]) -> String {
    let mut out = String::from(
        "| message | RFC 4475 | what RFC 4475 asks of an endpoint | UDP answer | TCP answer |\n\
         |---|---|---|---|---|\n",
    );
    for (c, (udp, tcp)) in CASES.iter().zip(rows) {
        out.push_str(&format!(
            "| `{}` | §{} | {} | {} | {} |\n",
            c.name, c.section, c.rfc, udp, tcp
        ));
    }
    out
}

const BEGIN: &str = "<!-- rfc4475:begin (generated by tests/rfc4475_wire.rs) -->\n";
const END: &str = "<!-- rfc4475:end -->";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_49_torture_messages_over_udp_and_tcp() {
    assert_eq!(CASES.len(), 49);
    let (mut udp_target, mut tcp_target) = tokio::join!(Target::start(), Target::start());
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for c in CASES {
        let bytes = fixture(c.name);
        let (udp_gw, tcp_gw) = tokio::join!(
            udp_target.for_message(&bytes),
            tcp_target.for_message(&bytes)
        );
        let (udp, tcp) = tokio::join!(over_udp(udp_gw, &bytes), over_tcp(tcp_gw, &bytes));
        eprintln!(
            "{:<11} udp: {:<12} tcp: {}",
            c.name,
            udp.codes(),
            tcp.codes()
        );
        if udp.codes() != c.udp {
            wrong.push(format!(
                "{} over UDP: {} (want {})",
                c.name,
                udp.codes(),
                c.udp
            ));
        }
        if tcp.codes() != c.tcp {
            wrong.push(format!(
                "{} over TCP: {} (want {})",
                c.name,
                tcp.codes(),
                c.tcp
            ));
        }
        rows.push((cell(&udp, false), cell(&tcp, true)));
    }
    // Garbage or not, the gateways still work: a plain OPTIONS gets 200 over each transport.
    let udp = over_udp(&udp_target.gw, &probe_options(udp_target.gw.sip_port)).await;
    let tcp = over_tcp(&tcp_target.gw, &probe_options(tcp_target.gw.sip_port)).await;
    assert_eq!((udp.codes().as_str(), tcp.codes().as_str()), ("200", "200"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let table = readme_table(&rows);
    check_readme(BEGIN, END, &table, "UPDATE_RFC4475", "rfc4475_wire");
}
