//! The browser JSON mapping (DESIGN §5): one JSON object per frame, with the snake_case
//! variant name under `"type"` and the variant's fields flat beside it:
//!
//! ```text
//! {"type":"send","conversation":"aaaaaaaaaaaaaaaaaaaaaaaaaa","client_seq":17,"body":"hi"}
//! ```
//!
//! The frames derive serde's externally tagged form, `{"send":{...}}`, because postcard needs
//! it; this module converts between that form and the flat one. Optional fields are always
//! written (as `null` when absent) and may be left out when decoding. Unknown fields are
//! ignored when decoding, so a newer client can talk to an older server.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::frame_error::FrameError;
use crate::frames::{ClientFrame, ServerFrame, CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES};
use crate::limits::FRAME_BYTES_MAX;

/// The JSON text of a server frame.
pub fn encode_server(frame: &ServerFrame) -> String {
    encode_flat(frame)
}

/// The JSON text of a client frame.
pub fn encode_client(frame: &ClientFrame) -> String {
    encode_flat(frame)
}

/// Reads a client frame from JSON text, as a server does. Text over [`FRAME_BYTES_MAX`] bytes
/// is [`FrameError::FrameTooLarge`] without being parsed; anything else that is not a frame is
/// [`FrameError::BadFrame`]. Semantic limits are checked separately by
/// [`ClientFrame::validate`].
pub fn decode_client(text: &str) -> Result<ClientFrame, FrameError> {
    decode_flat(text, "client", &CLIENT_FRAME_TYPES)
}

/// Reads a server frame from JSON text, as a client does. Errors as for [`decode_client`].
pub fn decode_server(text: &str) -> Result<ServerFrame, FrameError> {
    decode_flat(text, "server", &SERVER_FRAME_TYPES)
}

/// Rewrites serde_json's compact `{"name":{fields}}` as `{"type":"name",fields}`. Working on
/// the text keeps the fields in declaration order (serde_json's `Map` would sort them) and
/// avoids building a `Value` for every frame sent.
fn encode_flat<T: Serialize>(frame: &T) -> String {
    // Every frame type is made of strings, numbers, booleans, ids, lists and maps keyed by
    // conversation ids (which serialise as strings), all of which serde_json can write.
    let tagged = serde_json::to_string(frame).expect("frames always serialise to json");
    flatten(&tagged)
}

fn flatten(tagged: &str) -> String {
    // Variant names are snake_case ASCII, so the name needs no escaping and ends at the
    // first quote after the opening `{"`.
    let name_and_rest = tagged.strip_prefix("{\"").expect("a frame serialises as an object");
    let (name, rest) = name_and_rest.split_once("\":").expect("a frame object has one key");
    let fields = rest
        .strip_suffix('}')
        .and_then(|inner| inner.strip_prefix('{'))
        .and_then(|inner| inner.strip_suffix('}'))
        .expect("every frame variant holds an object of fields");
    let mut flat = String::with_capacity(tagged.len() + 8);
    flat.push_str("{\"type\":\"");
    flat.push_str(name);
    flat.push('"');
    if !fields.is_empty() {
        flat.push(',');
        flat.push_str(fields);
    }
    flat.push('}');
    flat
}

fn decode_flat<T: DeserializeOwned>(text: &str, side: &str, types: &[&'static str]) -> Result<T, FrameError> {
    if text.len() > FRAME_BYTES_MAX {
        return Err(FrameError::FrameTooLarge { length: text.len() as u64, max: FRAME_BYTES_MAX });
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|error| FrameError::bad_frame(format!("expected a json object, got invalid json: {error}")))?;
    let Value::Object(mut fields) = value else {
        return Err(FrameError::bad_frame(format!("expected a json object, got {}", describe(&value))));
    };
    let name = match fields.remove("type") {
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(FrameError::bad_frame(format!("expected \"type\" to be a string, got {}", describe(&other))))
        }
        None => return Err(FrameError::bad_frame("expected a \"type\" field, got none")),
    };
    let Some(&type_name) = types.iter().find(|&&known| known == name) else {
        return Err(FrameError::bad_frame(format!(
            "expected a {side} frame type ({}), got {:?}",
            types.join(", "),
            shorten(&name)
        )));
    };
    let mut tagged = Map::with_capacity(1);
    tagged.insert(name, Value::Object(fields));
    serde_json::from_value(Value::Object(tagged))
        .map_err(|error| FrameError::bad_frame(format!("{type_name} frame: {error}")))
}

/// A short description of what a JSON value is, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Number(number) => format!("number {number}"),
        Value::String(text) => format!("string {:?}", shorten(text)),
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// The first 32 characters of peer-supplied text, so error messages stay short.
fn shorten(text: &str) -> String {
    const CHARS_MAX: usize = 32;
    let mut short: String = text.chars().take(CHARS_MAX).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::frames::MessageRecord;
    use crate::ids::{ConversationId, DeviceId, UserId};

    const CONVERSATION: &str = "aeaqcaibaeaqcaibaeaqcaibae";

    fn conversation() -> ConversationId {
        ConversationId::parse(CONVERSATION).unwrap()
    }

    fn bad_frame_reason(result: Result<impl std::fmt::Debug, FrameError>) -> String {
        match result {
            Err(FrameError::BadFrame { reason }) => reason,
            other => panic!("expected a bad frame, got {other:?}"),
        }
    }

    #[test]
    fn send_is_flat_with_type_first_and_fields_in_order() {
        let frame = ClientFrame::Send { conversation: conversation(), client_seq: 17, body: "hi".into() };
        let text = encode_client(&frame);
        assert_eq!(text, format!(r#"{{"type":"send","conversation":"{CONVERSATION}","client_seq":17,"body":"hi"}}"#));
        assert_eq!(decode_client(&text), Ok(frame));
    }

    #[test]
    fn message_newtype_is_flat_too() {
        let frame = ServerFrame::Message(MessageRecord {
            conversation: conversation(),
            seq: 43,
            sender: UserId::new("bob").unwrap(),
            sender_device: DeviceId::new("d1").unwrap(),
            client_seq: 17,
            ts: 1_764_288_000_000,
            body: "hi".into(),
        });
        let text = encode_server(&frame);
        assert!(text.starts_with(r#"{"type":"message","conversation":""#), "{text}");
        assert_eq!(decode_server(&text), Ok(frame));
    }

    #[test]
    fn optional_and_default_fields_may_be_left_out() {
        let hello = decode_client(r#"{"type":"hello","device":"phone-1"}"#).unwrap();
        assert_eq!(
            hello,
            ClientFrame::Hello { device: DeviceId::new("phone-1").unwrap(), resume: Default::default(), token: None }
        );
        let create = decode_client(r#"{"type":"create_conversation","request_id":"r1","members":["bob"]}"#);
        assert!(matches!(create, Ok(ClientFrame::CreateConversation { title: None, .. })));
        let history = format!(r#"{{"type":"history","request_id":"r2","conversation":"{CONVERSATION}","limit":50}}"#);
        assert!(matches!(decode_client(&history), Ok(ClientFrame::History { before: None, limit: 50, .. })));
        let explicit_null = format!(
            r#"{{"type":"history","request_id":"r2","conversation":"{CONVERSATION}","before":null,"limit":50}}"#
        );
        assert_eq!(decode_client(&explicit_null), decode_client(&history));
        let presence = decode_client(r#"{"type":"presence","status":"away"}"#);
        assert!(matches!(presence, Ok(ClientFrame::Presence { custom: None, .. })));
    }

    #[test]
    fn unknown_fields_are_ignored_and_type_may_come_last() {
        let frame = decode_client(r#"{"nonce":7,"future":[1,2],"type":"ping"}"#);
        assert_eq!(frame, Ok(ClientFrame::Ping { nonce: 7 }));
    }

    #[test]
    fn resume_map_is_keyed_by_conversation_text() {
        let text = format!(r#"{{"type":"hello","device":"phone-1","resume":{{"{CONVERSATION}":41}}}}"#);
        let frame = decode_client(&text).unwrap();
        let ClientFrame::Hello { resume, .. } = &frame else { panic!("expected hello") };
        assert_eq!(resume.get(&conversation()), Some(&41));
        // Encoding writes the absent token as null.
        assert_eq!(encode_client(&frame), text.replace("41}}", r#"41},"token":null}"#));
        let bad_key = r#"{"type":"hello","device":"phone-1","resume":{"nope":41}}"#;
        assert!(bad_frame_reason(decode_client(bad_key)).starts_with("hello frame: "));
    }

    #[test]
    fn non_objects_say_what_came() {
        assert_eq!(bad_frame_reason(decode_client("[1,2]")), "expected a json object, got an array of 2 items");
        assert_eq!(bad_frame_reason(decode_client("\"ping\"")), "expected a json object, got string \"ping\"");
        assert_eq!(bad_frame_reason(decode_client("null")), "expected a json object, got null");
        let invalid = bad_frame_reason(decode_client("{\"type\":"));
        assert!(invalid.starts_with("expected a json object, got invalid json: "), "{invalid}");
        assert!(bad_frame_reason(decode_client("")).starts_with("expected a json object, got invalid json"));
    }

    #[test]
    fn type_must_be_a_known_string() {
        assert_eq!(bad_frame_reason(decode_client(r#"{"nonce":7}"#)), "expected a \"type\" field, got none");
        assert_eq!(bad_frame_reason(decode_client(r#"{"type":7}"#)), "expected \"type\" to be a string, got number 7");
        let unknown = bad_frame_reason(decode_client(r#"{"type":"pong","nonce":7}"#));
        assert_eq!(
            unknown,
            "expected a client frame type (hello, create_conversation, send, ack, read, history, \
             typing, presence, ping, settings), got \"pong\""
        );
        assert!(bad_frame_reason(decode_server(r#"{"type":"ping","nonce":7}"#))
            .starts_with("expected a server frame type ("));
        // The externally tagged form is not the wire form.
        assert!(decode_client(r#"{"ping":{"nonce":7}}"#).is_err());
    }

    #[test]
    fn wrong_fields_name_the_frame_and_the_field() {
        assert_eq!(bad_frame_reason(decode_client(r#"{"type":"ping"}"#)), "ping frame: missing field `nonce`");
        assert_eq!(
            bad_frame_reason(decode_client(r#"{"type":"ping","nonce":"7"}"#)),
            "ping frame: invalid type: string \"7\", expected u64"
        );
        assert_eq!(
            bad_frame_reason(decode_client(r#"{"type":"ping","nonce":-1}"#)),
            "ping frame: invalid value: integer `-1`, expected u64"
        );
        let bad_user =
            bad_frame_reason(decode_client(r#"{"type":"create_conversation","request_id":"r","members":["a b"]}"#));
        assert!(bad_user.contains("user id has character ' '"), "{bad_user}");
        let bad_status = bad_frame_reason(decode_client(r#"{"type":"presence","status":"busy"}"#));
        assert!(bad_status.starts_with("presence frame: unknown variant `busy`"), "{bad_status}");
    }

    #[test]
    fn text_over_the_frame_limit_is_too_large_before_parsing() {
        // Not even valid JSON: the length check comes first.
        let text = "x".repeat(FRAME_BYTES_MAX + 1);
        let error = decode_client(&text).unwrap_err();
        assert_eq!(error, FrameError::FrameTooLarge { length: FRAME_BYTES_MAX as u64 + 1, max: FRAME_BYTES_MAX });
        assert_eq!(error.code(), ErrorCode::TooLarge);
        assert_eq!(decode_server(&text).unwrap_err().code(), ErrorCode::TooLarge);
    }

    #[test]
    fn long_peer_text_is_not_echoed_whole() {
        let name = "z".repeat(10_000);
        let reason = bad_frame_reason(decode_client(&format!(r#"{{"type":"{name}"}}"#)));
        assert!(reason.len() < 400, "{} bytes", reason.len());
        let body = "y".repeat(100_000);
        let reason = bad_frame_reason(decode_client(&format!(r#"{{"type":"ping","nonce":"{body}"}}"#)));
        assert!(reason.len() <= crate::limits::ERROR_MESSAGE_BYTES_MAX, "{} bytes", reason.len());
    }

    #[test]
    fn type_names_match_the_json_tag() {
        let frames =
            [ClientFrame::Ping { nonce: 1 }, ClientFrame::Typing { conversation: conversation(), active: false }];
        for frame in frames {
            let value: Value = serde_json::from_str(&encode_client(&frame)).unwrap();
            assert_eq!(value["type"], frame.type_name());
        }
    }
}
