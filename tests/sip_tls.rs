//! SIP over TLS against kamailio's TLS listener on 127.0.0.1: the gateway registers and calls
//! through kamailio over TLS (checking kamailio's certificate against a CA file), kamailio
//! relays the call to a sipp callee over UDP, and the callee's media becomes the stream.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Gateway, Sipp};
use serde_json::json;

const T: Duration = Duration::from_secs(15);

/// A self-signed certificate for 127.0.0.1 (and sipstream.test): (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "sipstream.test".into()])
        .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn tls_call(call_id: &str, tls_port: u16) -> serde_json::Value {
    let mut body = common::kamailio_call(call_id, tls_port);
    body["sipTransport"] = json!("tls");
    body
}

/// REGISTER (401) and INVITE (407) over TLS to kamailio, whose certificate the gateway checks
/// against `sip_tls_ca_file`; the call is relayed to sipp over UDP; BYE goes back over TLS.
#[tokio::test]
async fn register_and_call_through_kamailio_over_tls() {
    common::require("kamailio");
    if !Path::new("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists() {
        panic!(
            "kamailio's tls module is missing: scripts/deps.sh test installs kamailio-tls-modules"
        );
    }
    let certs = common::tempdir();
    let (cert, key) = self_signed(certs.path());
    let gw_tls_port = common::free_tcp_port();
    let gw = Gateway::start(&[
        ("sip_tls_ca_file", cert.display().to_string()),
        ("sip_tls_verify", "true".into()),
        ("sip_tls_port", gw_tls_port.to_string()),
        ("sip_tls_cert_file", cert.display().to_string()),
        ("sip_tls_key_file", key.display().to_string()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut kam = common::Kamailio::start_tls(sipp.port, &cert, &key);
    let (status, v) = gw
        .post_json("/call/startup", tls_call("tls1", kam.tls_port))
        .await;
    assert_eq!(status, 200, "{v}");
    let call = gw.wait_status("tls1", &["ESTABLISHED"], T).await;
    assert_eq!(call["sipTransport"], "tls", "{call}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = gw.stream("tls1_stream").await.expect("stream");
    let packets = s["tracks"][0]["packets"].as_u64().unwrap_or(0);
    assert!(packets > 20, "media did not flow: {s}");
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "tls1"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("tls1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let log = kam.wait_log("expires=0", T);
    // Every request from the gateway reached kamailio over TLS.
    assert!(log.contains("REGISTER-PROTO tls"), "{log}");
    assert!(!log.contains("REGISTER-PROTO udp"), "{log}");
    assert!(log.contains("INVITE-AUTH-OK alice -> 10005"), "{log}");
    assert!(log.contains("INVITE-PROTO tls"), "{log}");
    assert!(log.contains("IN-DIALOG-PROTO BYE tls"), "{log}");
    assert!(log.contains("REGISTER-OK alice expires=0"), "{log}");
    let logs = gw.logs();
    assert!(!logs.contains("s3cret-Pa55"), "password in the logs");
}

/// The provider's certificate is not signed by the configured CA: the TLS handshake fails,
/// the call fails (no fallback to an unchecked connection), and kamailio never sees a
/// request. With `sip_tls_verify=false` the same provider is taken.
#[tokio::test]
async fn an_untrusted_certificate_fails_the_call() {
    common::require("kamailio");
    let certs = common::tempdir();
    let (cert, key) = self_signed(certs.path());
    let other = common::tempdir();
    let (other_ca, _) = self_signed(other.path());
    let gw = Gateway::start(&[("sip_tls_ca_file", other_ca.display().to_string())]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let kam = common::Kamailio::start_tls(sipp.port, &cert, &key);
    let mut body = tls_call("tls2", kam.tls_port);
    body["sipRegisterRequired"] = json!("false");
    let (status, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(status, 200, "{v}");
    let call = gw.wait_status("tls2", &["FAILED"], T).await;
    assert_eq!(call["sipStatus"], 503, "{call}");
    assert!(
        gw.logs().contains("TLS handshake"),
        "the handshake failure is logged"
    );
    assert!(!kam.log().contains("INVITE-PROTO"), "{}", kam.log());

    // The lab switch: sip_tls_verify=false takes the same certificate, and the call goes on.
    let lab = Gateway::start(&[("sip_tls_verify", "false".into())]).await;
    let mut body = tls_call("tls3", kam.tls_port);
    body["sipRegisterRequired"] = json!("false");
    let (status, v) = lab.post_json("/call/startup", body).await;
    assert_eq!(status, 200, "{v}");
    let call = lab.wait_status("tls3", &["ESTABLISHED"], T).await;
    assert_eq!(call["sipTransport"], "tls", "{call}");
    let (status, _) = lab
        .post_json("/call/terminate", json!({"callId": "tls3"}))
        .await;
    assert_eq!(status, 200);
    lab.wait_status("tls3", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

/// `sipTransport` takes tls; a sips: callee means TLS; a callee URI that asks for another
/// transport than sipTransport is refused.
#[tokio::test]
async fn rest_transport_validation() {
    let gw = Gateway::start(&[]).await;
    let (status, v) = gw
        .post_json(
            "/call/startup",
            json!({"callee": "1", "sipDomain": "127.0.0.1", "sipTransport": "sctp"}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("expected udp, tcp or tls"),
        "{v}"
    );
    let (status, v) = gw
        .post_json(
            "/call/startup",
            json!({"callee": "sip:1@127.0.0.1;transport=tls", "sipTransport": "udp"}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("sipTransport"),
        "{v}"
    );
}
