//! JSON input the way WCS clients send it: booleans and numbers may come as strings
//! (`"hasVideo": "true"`, `"sipPort": "5060"`), unknown fields are ignored, and every error
//! names the field at fault.

use actix_web::web::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;

use super::error::ApiError;

/// Parses a request body; errors name the JSON path (`sipPort: invalid type ...`).
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("malformed JSON: {inner}"))
        } else if path == "." || path.is_empty() {
            ApiError::BadRequest(inner.to_string())
        } else {
            ApiError::BadRequest(format!("{path}: {inner}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrString {
    Bool(bool),
    Str(String),
}

/// `true`, `false`, `"true"`, `"false"` (any case), or absent/null.
pub fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<BoolOrString>::deserialize(d)? {
        None => Ok(None),
        Some(BoolOrString::Bool(b)) => Ok(Some(b)),
        Some(BoolOrString::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            "" => Ok(None),
            _ => Err(de::Error::custom(format!(
                "expected true or false, got {s:?}"
            ))),
        },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(u64),
    Str(String),
}

/// A port as a number or a numeric string (1–65535), or absent/null/"".
pub fn flex_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = match Option::<NumOrString>::deserialize(d)? {
        None => return Ok(None),
        Some(NumOrString::Num(n)) => n,
        Some(NumOrString::Str(s)) if s.trim().is_empty() => return Ok(None),
        Some(NumOrString::Str(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| de::Error::custom(format!("expected a port number, got {s:?}")))?,
    };
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => Err(de::Error::custom(format!(
            "port {n} is out of range 1-65535"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct T {
        #[allow(dead_code)]
        name: String,
        #[serde(default, deserialize_with = "flex_bool")]
        has_video: Option<bool>,
        #[serde(default, deserialize_with = "flex_port")]
        sip_port: Option<u16>,
    }

    fn parse(s: &str) -> Result<T, ApiError> {
        parse_body(&Bytes::from(s.to_string()))
    }

    #[test]
    fn strings_and_booleans_both_work() {
        let t = parse(r#"{"name":"a","hasVideo":"true","sipPort":"5070","extra":1}"#).unwrap();
        assert_eq!((t.has_video, t.sip_port), (Some(true), Some(5070)));
        let t = parse(r#"{"name":"a","hasVideo":false,"sipPort":5060}"#).unwrap();
        assert_eq!((t.has_video, t.sip_port), (Some(false), Some(5060)));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"hasVideo":true}"#).unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
        let e = parse(r#"{"name":"a","sipPort":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sipPort:"), "{e}");
        let e = parse(r#"{"name":"a","sipPort":70000}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sipPort:"), "{e}");
        let e = parse(r#"{"name":"a","hasVideo":"maybe"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hasVideo:"), "{e}");
        let e = parse(r#"{"name": 5}"#).unwrap_err().to_string();
        assert!(e.starts_with("name:"), "{e}");
        let e = parse(r#"{"name":"#).unwrap_err().to_string();
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
