//! Golden files of the protocol: the JSON text and postcard bytes of every frame variant,
//! built from fixed example values. A change to any snapshot is a change to the wire
//! protocol and must be deliberate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use natter_proto::frames::{CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES};
use natter_proto::json::{decode_client, decode_server, encode_client, encode_server};
use natter_proto::{
    decode_payload, encode_frame, ActivityStatus, ClientFrame, ConversationId, ConversationSummary, DeviceId,
    ErrorCode, FrameDecoder, MessageRecord, PresencePrivacy, PresenceStatus, ServerFrame, UserId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

const TS: u64 = 1_764_288_000_000;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

/// Bytes 0x00..=0x0f.
fn conversation_a() -> ConversationId {
    ConversationId::from_bytes(std::array::from_fn(|index| index as u8))
}

/// Bytes 0xf0..=0xff.
fn conversation_b() -> ConversationId {
    ConversationId::from_bytes(std::array::from_fn(|index| 0xf0 + index as u8))
}

fn message(seq: u64, body: &str) -> MessageRecord {
    MessageRecord {
        conversation: conversation_a(),
        seq,
        sender: user("bob"),
        sender_device: device("d1"),
        client_seq: seq - 26,
        ts: TS + seq,
        body: body.into(),
    }
}

fn client_examples() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "client_hello",
            ClientFrame::Hello {
                device: device("phone-1"),
                resume: BTreeMap::from([(conversation_a(), 41), (conversation_b(), 0)]),
                token: None,
            },
        ),
        (
            "client_hello_quic",
            ClientFrame::Hello {
                device: device("phone-1"),
                resume: BTreeMap::new(),
                token: Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln".into()),
            },
        ),
        ("client_hello_fresh", ClientFrame::Hello { device: device("phone-1"), resume: BTreeMap::new(), token: None }),
        (
            "client_create_conversation",
            ClientFrame::CreateConversation {
                request_id: "r1".into(),
                members: vec![user("bob"), user("carol")],
                title: Some("trip".into()),
            },
        ),
        ("client_send", ClientFrame::Send { conversation: conversation_a(), client_seq: 17, body: "hi".into() }),
        ("client_ack", ClientFrame::Ack { conversation: conversation_a(), seq: 42 }),
        ("client_read", ClientFrame::Read { conversation: conversation_a(), seq: 42 }),
        (
            "client_history",
            ClientFrame::History {
                request_id: "r2".into(),
                conversation: conversation_a(),
                before: Some(100),
                limit: 50,
            },
        ),
        (
            "client_history_newest",
            ClientFrame::History { request_id: "r3".into(), conversation: conversation_a(), before: None, limit: 200 },
        ),
        ("client_typing", ClientFrame::Typing { conversation: conversation_a(), active: true }),
        (
            "client_presence",
            ClientFrame::Presence { status: ActivityStatus::Active, custom: Some("in a meeting".into()) },
        ),
        ("client_ping", ClientFrame::Ping { nonce: 7 }),
        (
            "client_settings",
            ClientFrame::Settings { request_id: "r4".into(), presence_privacy: PresencePrivacy::Contacts },
        ),
    ]
}

fn server_examples() -> Vec<(&'static str, ServerFrame)> {
    vec![
        (
            "server_welcome",
            ServerFrame::Welcome {
                user: user("alice"),
                device: device("phone-1"),
                conversations: vec![
                    ConversationSummary {
                        id: conversation_a(),
                        last_seq: 43,
                        members: vec![user("alice"), user("bob")],
                        title: None,
                    },
                    ConversationSummary {
                        id: conversation_b(),
                        last_seq: 0,
                        members: vec![user("alice"), user("bob"), user("carol")],
                        title: Some("trip".into()),
                    },
                ],
            },
        ),
        (
            "server_conversation",
            ServerFrame::Conversation {
                id: conversation_b(),
                members: vec![user("alice"), user("bob"), user("carol")],
                title: Some("trip".into()),
                request_id: Some("r1".into()),
            },
        ),
        ("server_message", ServerFrame::Message(message(43, "hi"))),
        ("server_send_ok", ServerFrame::SendOk { conversation: conversation_a(), client_seq: 17, seq: 43, ts: TS }),
        (
            "server_receipt",
            ServerFrame::Receipt { conversation: conversation_a(), user: user("bob"), delivered: 43, read: 40 },
        ),
        (
            "server_history",
            ServerFrame::History {
                request_id: "r2".into(),
                conversation: conversation_a(),
                messages: vec![message(41, "hello"), message(42, "héllo ✓")],
            },
        ),
        ("server_typing", ServerFrame::Typing { conversation: conversation_a(), user: user("bob"), active: true }),
        (
            "server_presence",
            ServerFrame::Presence {
                user: user("bob"),
                status: PresenceStatus::Online,
                last_seen: Some(TS),
                custom: Some("in a meeting".into()),
            },
        ),
        (
            "server_presence_offline",
            ServerFrame::Presence {
                user: user("carol"),
                status: PresenceStatus::Offline,
                last_seen: None,
                custom: None,
            },
        ),
        (
            "server_error",
            ServerFrame::Error {
                request_id: None,
                conversation: Some(conversation_a()),
                client_seq: Some(17),
                code: ErrorCode::NotMember,
                message: "alice is not a member of the conversation".into(),
                retry_after_ms: None,
            },
        ),
        (
            "server_error_request",
            ServerFrame::Error {
                request_id: Some("r1".into()),
                conversation: None,
                client_seq: None,
                code: ErrorCode::TooLarge,
                message: "members has 1025 users, expected at most 1024".into(),
                retry_after_ms: None,
            },
        ),
        (
            "server_error_rate_limited",
            ServerFrame::Error {
                request_id: None,
                conversation: Some(conversation_a()),
                client_seq: Some(18),
                code: ErrorCode::RateLimited,
                message: "alice sends more than 20 messages a second; retry in 120 ms".into(),
                retry_after_ms: Some(120),
            },
        ),
        ("server_pong", ServerFrame::Pong { nonce: 7 }),
        (
            "server_settings",
            ServerFrame::Settings { request_id: "r4".into(), presence_privacy: PresencePrivacy::Nobody },
        ),
    ]
}

/// The golden text of one frame: its JSON, then its QUIC bytes as hex (the length prefix on
/// its own line, then the payload 32 bytes a line).
fn golden_text<T: Serialize>(json: &str, frame: &T) -> String {
    let mut bytes = Vec::new();
    encode_frame(frame, &mut bytes).unwrap();
    let (prefix, payload) = bytes.split_at(4);
    let mut text = format!("json:\n{json}\n\npostcard (u32 length, then payload):\n{}\n", hex(prefix));
    for line in payload.chunks(32) {
        writeln!(text, "{}", hex(line)).unwrap();
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(text, "{byte:02x}").unwrap();
    }
    text
}

/// Decodes `frame`'s QUIC bytes through a [`FrameDecoder`], one byte at a time.
fn through_decoder<T: Serialize + DeserializeOwned>(frame: &T) -> T {
    let mut bytes = Vec::new();
    encode_frame(frame, &mut bytes).unwrap();
    assert_eq!(decode_payload::<T>(&bytes[4..]).map(|_| ()), Ok(()));
    let mut decoder = FrameDecoder::new();
    let mut decoded = None;
    for byte in &bytes {
        assert_eq!(decoder.push(std::slice::from_ref(byte)), 1);
        if let Some(frame) = decoder.next_frame::<T>().unwrap() {
            assert!(decoded.is_none(), "one frame in, one frame out");
            decoded = Some(frame);
        }
    }
    decoded.expect("the decoder yields the frame once its last byte arrives")
}

fn json_type(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["type"].as_str().unwrap().to_owned()
}

#[test]
fn client_frames() {
    for (name, frame) in client_examples() {
        let json = encode_client(&frame);
        insta::assert_snapshot!(name, golden_text(&json, &frame));
        assert_eq!(decode_client(&json).as_ref(), Ok(&frame), "{name} json decodes back");
        assert_eq!(through_decoder(&frame), frame, "{name} postcard decodes back");
        assert_eq!(json_type(&json), frame.type_name(), "{name}");
        assert_eq!(frame.validate(), Ok(()), "{name} is a valid example");
    }
}

#[test]
fn server_frames() {
    for (name, frame) in server_examples() {
        let json = encode_server(&frame);
        insta::assert_snapshot!(name, golden_text(&json, &frame));
        assert_eq!(decode_server(&json).as_ref(), Ok(&frame), "{name} json decodes back");
        assert_eq!(through_decoder(&frame), frame, "{name} postcard decodes back");
        assert_eq!(json_type(&json), frame.type_name(), "{name}");
    }
}

#[test]
fn every_variant_has_a_golden() {
    let client: BTreeSet<_> = client_examples().iter().map(|(_, frame)| frame.type_name()).collect();
    assert_eq!(client, CLIENT_FRAME_TYPES.into_iter().collect());
    let server: BTreeSet<_> = server_examples().iter().map(|(_, frame)| frame.type_name()).collect();
    assert_eq!(server, SERVER_FRAME_TYPES.into_iter().collect());
}

#[test]
fn design_examples_decode() {
    // The client frames exactly as DESIGN §5 writes them, with a real conversation id.
    let id = conversation_a().to_string();
    let other = conversation_b().to_string();
    let texts = [
        format!(r#"{{"type":"hello","device":"phone-1","resume":{{"{id}":41,"{other}":0}}}}"#),
        r#"{"type":"create_conversation","request_id":"r1","members":["bob","carol"],"title":"trip"}"#.to_owned(),
        format!(r#"{{"type":"send","conversation":"{id}","client_seq":17,"body":"hi"}}"#),
        format!(r#"{{"type":"ack","conversation":"{id}","seq":42}}"#),
        format!(r#"{{"type":"read","conversation":"{id}","seq":42}}"#),
        format!(r#"{{"type":"history","request_id":"r2","conversation":"{id}","before":100,"limit":50}}"#),
        format!(r#"{{"type":"typing","conversation":"{id}","active":true}}"#),
        r#"{"type":"presence","status":"active","custom":"in a meeting"}"#.to_owned(),
        r#"{"type":"ping","nonce":7}"#.to_owned(),
    ];
    let examples = client_examples();
    for text in texts {
        let frame = decode_client(&text).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert!(examples.iter().any(|(_, example)| *example == frame), "{text} matches a golden");
    }
    // Server frames that leave optional fields out, as DESIGN §5's presence and error do.
    let presence = decode_server(r#"{"type":"presence","user":"bob","status":"online","last_seen":1764288000000}"#);
    assert_eq!(
        presence,
        Ok(ServerFrame::Presence {
            user: user("bob"),
            status: PresenceStatus::Online,
            last_seen: Some(TS),
            custom: None
        })
    );
    let error = decode_server(r#"{"type":"error","request_id":"r1","code":"not_member","message":"…"}"#);
    assert!(matches!(
        error,
        Ok(ServerFrame::Error { conversation: None, client_seq: None, code: ErrorCode::NotMember, .. })
    ));
}
