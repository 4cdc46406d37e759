//! RFC 7865 recording metadata (`application/rs-metadata+xml`) for one Recording Session,
//! and the checks on caller-supplied XML blocks.
//!
//! Every value the gateway writes is escaped; caller XML (participant blocks, group and
//! session extensions) is parsed first and must be well-formed element content, so it can
//! never close our elements or open a second document. Extension elements without a
//! namespace are placed in `urn:sipstream:siprec:ext`, because the schema admits foreign
//! elements only from another namespace (`##other`).

use base64::Engine;
use rand::RngCore;

/// Namespace given to extension elements that carry none.
pub const EXT_NS: &str = "urn:sipstream:siprec:ext";
pub const RECORDING_NS: &str = "urn:ietf:params:xml:ns:recording:1";
/// Our namespace for what a media exchange participant is.
pub const EXCHANGE_NS: &str = "urn:sipstream:siprec:exchange";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("must be XML elements, not text or a document declaration")]
    NotElementContent,
}

/// A new RFC 7865 identifier: a random UUID (version 4), base64 encoded.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not XML 1.0 characters: controls other than tab/LF/CR, U+FFFE and U+FFFF
            // (a Call-ID or display name with U+FFFF made the document not well-formed; found
            // by the siprec_body fuzz target).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Checks that `block` is one or more well-formed elements (no bare text, no declaration)
/// and returns it with a namespace added to top-level elements that declare none.
pub fn check_block(block: &str) -> Result<String, XmlError> {
    let trimmed = block.trim();
    if trimmed.starts_with("<?") || trimmed.starts_with("<!") {
        return Err(XmlError::NotElementContent);
    }
    let wrapped = format!("<w xmlns=\"{EXT_NS}\">{trimmed}</w>");
    let doc =
        roxmltree::Document::parse(&wrapped).map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
    let root = doc.root_element();
    let mut elements = 0;
    for child in root.children() {
        if child.is_element() {
            elements += 1;
        } else if child.is_text() && !child.text().unwrap_or("").trim().is_empty() {
            return Err(XmlError::NotElementContent);
        }
    }
    if elements == 0 {
        return Err(XmlError::NotElementContent);
    }
    // Parsed inside a wrapper with a default namespace: elements without their own end up
    // in EXT_NS once the same wrapper namespace is declared on them.
    Ok(add_default_ns(trimmed, &doc))
}

/// Adds `xmlns="EXT_NS"` to each top-level element that has no default namespace of its own
/// and no prefix.
fn add_default_ns(block: &str, doc: &roxmltree::Document) -> String {
    let root = doc.root_element();
    let offset = format!("<w xmlns=\"{EXT_NS}\">").len();
    let mut inserts: Vec<usize> = Vec::new();
    for child in root.children().filter(|c| c.is_element()) {
        let declares_default = child
            .namespaces()
            .any(|ns| ns.name().is_none() && ns.uri() != EXT_NS);
        let tag_start = child.range().start;
        let prefixed = block
            .get(tag_start.saturating_sub(offset) + 1..)
            .and_then(|s| {
                s.split(|c: char| c.is_whitespace() || c == '>' || c == '/')
                    .next()
            })
            .is_some_and(|name| name.contains(':'));
        if !declares_default && !prefixed {
            // After the element name.
            let start = tag_start.saturating_sub(offset);
            let name_len = child.tag_name().name().len();
            inserts.push(start + 1 + name_len);
        }
    }
    let mut out = block.to_string();
    for at in inserts.into_iter().rev() {
        if out.is_char_boundary(at) {
            out.insert_str(at, &format!(" xmlns=\"{EXT_NS}\""));
        }
    }
    out
}

/// One participant: built from a From/To name-addr unless the caller gave an XML block.
#[derive(Debug, Clone)]
pub enum Participant {
    Aor {
        aor: String,
        name: Option<String>,
    },
    /// A checked `<nameID ...>` (or other) block placed inside `<participant>`.
    Xml(String),
}

/// Everything the metadata document says.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub session_id: String,
    pub group: Option<(String, Option<String>)>,
    pub session_extension: Option<String>,
    /// The recorded call's SIP Call-ID.
    pub sip_session_id: String,
    pub start_time: String,
    /// (participant id, participant) for the caller (our side) and the callee.
    pub caller: (String, Participant),
    pub callee: (String, Participant),
    /// (stream id, label): what the callee sends, then what the caller (gateway) sends.
    pub callee_stream: (String, String),
    pub caller_stream: (String, String),
    /// Parties that joined the call's media by a media exchange, in the order they joined.
    pub exchanges: Vec<ExchangeMeta>,
}

/// A party joined to the recorded call by a media exchange (a fork's target, a media server
/// that talks to a leg, a listener, a barger): an RFC 7865 participant of the session for
/// the time it took part, receiving the recorded streams of the legs it hears. What it is
/// (kind, leg, exchange id) goes in an `<exchange>` element of our namespace.
#[derive(Debug, Clone)]
pub struct ExchangeMeta {
    pub participant_id: String,
    pub aor: String,
    pub exchange_id: String,
    /// `send_to_uri`, `fetch_from_uri`, `send_from_call` or `fetch_to_call`.
    pub kind: String,
    /// `caller`, `callee` or `both`.
    pub leg: String,
    pub associate_time: String,
    pub disassociate_time: Option<String>,
    /// Ids of the recorded streams it receives.
    pub recv: Vec<String>,
}

impl Metadata {
    /// The XML document.
    pub fn to_xml(&self) -> String {
        let mut x = String::with_capacity(2048);
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n");
        x.push_str(&format!("<recording xmlns=\"{RECORDING_NS}\">\r\n"));
        x.push_str("  <datamode>complete</datamode>\r\n");
        let sid = escape(&self.session_id);
        if let Some((group_id, ext)) = &self.group {
            x.push_str(&format!("  <group group_id=\"{}\">\r\n", escape(group_id)));
            x.push_str(&format!(
                "    <associate-time>{}</associate-time>\r\n",
                escape(&self.start_time)
            ));
            if let Some(ext) = ext {
                x.push_str(&format!("    {ext}\r\n"));
            }
            x.push_str("  </group>\r\n");
        }
        x.push_str(&format!("  <session session_id=\"{sid}\">\r\n"));
        x.push_str(&format!(
            "    <sipSessionID>{}</sipSessionID>\r\n",
            escape(&self.sip_session_id)
        ));
        if let Some((group_id, _)) = &self.group {
            x.push_str(&format!(
                "    <group-ref>{}</group-ref>\r\n",
                escape(group_id)
            ));
        }
        x.push_str(&format!(
            "    <start-time>{}</start-time>\r\n",
            escape(&self.start_time)
        ));
        if let Some(ext) = &self.session_extension {
            x.push_str(&format!("    {ext}\r\n"));
        }
        x.push_str("  </session>\r\n");
        for (id, p) in [&self.caller, &self.callee] {
            x.push_str(&format!(
                "  <participant participant_id=\"{}\">\r\n",
                escape(id)
            ));
            match p {
                Participant::Aor { aor, name } => {
                    x.push_str(&format!("    <nameID aor=\"{}\">\r\n", escape(aor)));
                    if let Some(n) = name {
                        x.push_str(&format!("      <name>{}</name>\r\n", escape(n)));
                    }
                    x.push_str("    </nameID>\r\n");
                }
                Participant::Xml(block) => x.push_str(&format!("    {block}\r\n")),
            }
            x.push_str("  </participant>\r\n");
        }
        for e in &self.exchanges {
            x.push_str(&format!(
                "  <participant participant_id=\"{}\">\r\n    <nameID aor=\"{}\"/>\r\n    <exchange xmlns=\"{EXCHANGE_NS}\" exchangeId=\"{}\" kind=\"{}\" leg=\"{}\"/>\r\n  </participant>\r\n",
                escape(&e.participant_id),
                escape(&e.aor),
                escape(&e.exchange_id),
                escape(&e.kind),
                escape(&e.leg)
            ));
        }
        // RFC 7865's schema is a sequence: participants, streams, then the associations.
        for (id, label) in [&self.callee_stream, &self.caller_stream] {
            x.push_str(&format!(
                "  <stream stream_id=\"{}\" session_id=\"{sid}\">\r\n    <label>{}</label>\r\n  </stream>\r\n",
                escape(id),
                escape(label)
            ));
        }
        for (id, _) in [&self.caller, &self.callee] {
            x.push_str(&format!(
                "  <participantsessionassoc participant_id=\"{}\" session_id=\"{sid}\">\r\n    <associate-time>{}</associate-time>\r\n  </participantsessionassoc>\r\n",
                escape(id),
                escape(&self.start_time)
            ));
        }
        for e in &self.exchanges {
            x.push_str(&format!(
                "  <participantsessionassoc participant_id=\"{}\" session_id=\"{sid}\">\r\n    <associate-time>{}</associate-time>\r\n",
                escape(&e.participant_id),
                escape(&e.associate_time)
            ));
            if let Some(t) = &e.disassociate_time {
                x.push_str(&format!(
                    "    <disassociate-time>{}</disassociate-time>\r\n",
                    escape(t)
                ));
            }
            x.push_str("  </participantsessionassoc>\r\n");
        }
        // The callee sends the callee stream and receives ours; the caller the reverse.
        for ((pid, _), send, recv) in [
            (&self.callee, &self.callee_stream.0, &self.caller_stream.0),
            (&self.caller, &self.caller_stream.0, &self.callee_stream.0),
        ] {
            x.push_str(&format!(
                "  <participantstreamassoc participant_id=\"{}\">\r\n    <send>{}</send>\r\n    <recv>{}</recv>\r\n  </participantstreamassoc>\r\n",
                escape(pid),
                escape(send),
                escape(recv)
            ));
        }
        for e in &self.exchanges {
            x.push_str(&format!(
                "  <participantstreamassoc participant_id=\"{}\">\r\n",
                escape(&e.participant_id)
            ));
            for r in &e.recv {
                x.push_str(&format!("    <recv>{}</recv>\r\n", escape(r)));
            }
            x.push_str("  </participantstreamassoc>\r\n");
        }
        x.push_str("</recording>\r\n");
        x
    }
}

/// The display name and URI of a name-addr (`"Alice" <sip:a@x>;tag=1`).
pub fn name_addr(value: &str) -> (Option<String>, String) {
    let value = value.trim();
    let (name, rest) = match value.find('<') {
        Some(i) => {
            let name = value[..i].trim().trim_matches('"').trim();
            (
                Some(name.to_string()).filter(|n| !n.is_empty()),
                &value[i..],
            )
        }
        None => (None, value),
    };
    let uri = crate::sip::dialog::angle_uri(rest).unwrap_or_else(|| rest.to_string());
    (name, uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_is_always_xml_characters() {
        let e = escape("a\u{FFFF}b\u{FFFE}c\u{1}<&\"\t\u{10000}");
        assert_eq!(e, "abc&lt;&amp;&quot;\t\u{10000}");
        let doc = format!("<a b=\"{e}\">{e}</a>");
        assert!(roxmltree::Document::parse(&doc).is_ok(), "{doc}");
    }

    #[test]
    fn blocks_must_be_well_formed_elements() {
        assert!(check_block("<callcenterID>17</callcenterID>").is_ok());
        assert!(check_block("<a>unclosed")
            .unwrap_err()
            .to_string()
            .starts_with("not well-formed"));
        assert_eq!(check_block("plain text"), Err(XmlError::NotElementContent));
        assert_eq!(
            check_block("<?xml version=\"1.0\"?><a/>"),
            Err(XmlError::NotElementContent)
        );
        // An attempt to close our element and add a sibling is not well-formed inside ours.
        assert!(check_block("</session><session>").is_err());
        assert!(check_block("<a/></w><b>").is_err());
    }

    #[test]
    fn blocks_without_namespace_get_the_extension_one() {
        let b = check_block("<callcenterID>17</callcenterID><x:y xmlns:x=\"urn:a\"/>").unwrap();
        assert_eq!(
            b,
            format!("<callcenterID xmlns=\"{EXT_NS}\">17</callcenterID><x:y xmlns:x=\"urn:a\"/>")
        );
        let b = check_block("<c xmlns=\"urn:own\">1</c>").unwrap();
        assert_eq!(b, "<c xmlns=\"urn:own\">1</c>");
    }

    #[test]
    fn document_is_well_formed_and_escapes_values() {
        let m = Metadata {
            session_id: new_id(),
            group: Some((new_id(), Some(check_block("<g>1</g>").unwrap()))),
            session_extension: Some(check_block("<s>2</s>").unwrap()),
            sip_session_id: "abc@1.2.3.4".into(),
            start_time: "2026-11-22T15:00:00Z".into(),
            caller: (
                new_id(),
                Participant::Aor {
                    aor: "sip:a@x".into(),
                    name: Some("A <&> \"B\"".into()),
                },
            ),
            callee: (
                new_id(),
                Participant::Aor {
                    aor: "sip:b@x".into(),
                    name: None,
                },
            ),
            callee_stream: (new_id(), "1".into()),
            caller_stream: (new_id(), "2".into()),
            exchanges: Vec::new(),
        };
        let mut m = m;
        let fork = new_id();
        m.exchanges.push(ExchangeMeta {
            participant_id: fork.clone(),
            aor: "sip:qa@x?a=<&>".into(),
            exchange_id: "mx-1".into(),
            kind: "send_to_uri".into(),
            leg: "callee".into(),
            associate_time: "2026-11-22T15:00:05Z".into(),
            disassociate_time: Some("2026-11-22T15:00:09Z".into()),
            recv: vec![m.callee_stream.0.clone()],
        });
        let xml = m.to_xml();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(
            doc.root_element().tag_name().namespace(),
            Some(RECORDING_NS)
        );
        assert!(xml.contains("<name>A &lt;&amp;&gt; &quot;B&quot;</name>"));
        assert_eq!(
            doc.descendants()
                .filter(|n| n.has_tag_name((RECORDING_NS, "participantstreamassoc")))
                .count(),
            3
        );
        // The schema's sequence: each kind of element after the kinds before it.
        let order = [
            "datamode",
            "group",
            "session",
            "participant",
            "stream",
            "sessionrecordingassoc",
            "participantsessionassoc",
            "participantstreamassoc",
        ];
        let ranks: Vec<usize> = doc
            .root_element()
            .children()
            .filter(|n| n.is_element())
            .map(|n| {
                order
                    .iter()
                    .position(|o| *o == n.tag_name().name())
                    .unwrap()
            })
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}\n{xml}");
        // The exchange's party: its URI escaped, what it is in our namespace, when it left,
        // and that it hears the callee's stream.
        assert!(xml.contains("aor=\"sip:qa@x?a=&lt;&amp;&gt;\""), "{xml}");
        let ex = doc
            .descendants()
            .find(|n| n.has_tag_name((EXCHANGE_NS, "exchange")))
            .unwrap();
        assert_eq!(ex.attribute("kind"), Some("send_to_uri"));
        assert_eq!(ex.attribute("exchangeId"), Some("mx-1"));
        let assoc = doc
            .descendants()
            .find(|n| {
                n.has_tag_name((RECORDING_NS, "participantsessionassoc"))
                    && n.attribute("participant_id") == Some(fork.as_str())
            })
            .unwrap();
        assert!(assoc
            .children()
            .any(|c| c.has_tag_name((RECORDING_NS, "disassociate-time"))));
        let recv = doc
            .descendants()
            .find(|n| {
                n.has_tag_name((RECORDING_NS, "participantstreamassoc"))
                    && n.attribute("participant_id") == Some(fork.as_str())
            })
            .unwrap();
        assert_eq!(
            recv.children()
                .find(|c| c.has_tag_name((RECORDING_NS, "recv")))
                .and_then(|c| c.text()),
            Some(m.callee_stream.0.as_str())
        );
    }

    #[test]
    fn name_addr_splits_display_name() {
        assert_eq!(
            name_addr("\"Alice\" <sip:a@x>;tag=1"),
            (Some("Alice".into()), "sip:a@x".into())
        );
        assert_eq!(name_addr("<sip:b@y>"), (None, "sip:b@y".into()));
        assert_eq!(name_addr("sip:c@z;tag=2"), (None, "sip:c@z".into()));
    }

    #[test]
    fn ids_are_base64_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 24);
        assert!(id.ends_with("=="));
    }
}
