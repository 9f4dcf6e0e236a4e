//! Property tests of the codecs: every frame survives both encodings, chunking never changes
//! what the decoder yields, and no input, however broken, panics a decoder or produces
//! anything but a typed `bad_frame` or `too_large` error.

use std::collections::BTreeMap;

use natter_proto::codec::{DECODER_BUFFER_BYTES_MAX, LENGTH_PREFIX_BYTES};
use natter_proto::frames::{CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES};
use natter_proto::json::{decode_client, decode_server, encode_client, encode_server};
use natter_proto::limits::FRAME_BYTES_MAX;
use natter_proto::{
    decode_payload, encode_frame, ActivityStatus, ClientFrame, ConversationId, ConversationSummary, DeviceId,
    ErrorCode, FrameDecoder, FrameError, MessageRecord, PresencePrivacy, PresenceStatus, ServerFrame, UserId,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

// ---- strategies ----

fn user_id() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9_.-]{1,64}".prop_map(|name| UserId::new(name).unwrap())
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    "[A-Za-z0-9_.-]{1,64}".prop_map(|name| DeviceId::new(name).unwrap())
}

fn conversation_id() -> impl Strategy<Value = ConversationId> {
    any::<[u8; 16]>().prop_map(ConversationId::from_bytes)
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn users() -> impl Strategy<Value = Vec<UserId>> {
    prop::collection::vec(user_id(), 0..5)
}

fn privacy() -> impl Strategy<Value = PresencePrivacy> {
    select(vec![PresencePrivacy::Everyone, PresencePrivacy::Contacts, PresencePrivacy::Nobody])
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (device_id(), prop::collection::btree_map(conversation_id(), any::<u64>(), 0..4), prop::option::of(text()))
            .prop_map(|(device, resume, token)| ClientFrame::Hello { device, resume, token }),
        (text(), users(), prop::option::of(text())).prop_map(|(request_id, members, title)| {
            ClientFrame::CreateConversation { request_id, members, title }
        }),
        (conversation_id(), any::<u64>(), text())
            .prop_map(|(conversation, client_seq, body)| { ClientFrame::Send { conversation, client_seq, body } }),
        (conversation_id(), any::<u64>()).prop_map(|(conversation, seq)| ClientFrame::Ack { conversation, seq }),
        (conversation_id(), any::<u64>()).prop_map(|(conversation, seq)| ClientFrame::Read { conversation, seq }),
        (text(), conversation_id(), prop::option::of(any::<u64>()), any::<u32>()).prop_map(
            |(request_id, conversation, before, limit)| ClientFrame::History {
                request_id,
                conversation,
                before,
                limit
            }
        ),
        (conversation_id(), any::<bool>())
            .prop_map(|(conversation, active)| ClientFrame::Typing { conversation, active }),
        (select(vec![ActivityStatus::Active, ActivityStatus::Away]), prop::option::of(text()))
            .prop_map(|(status, custom)| ClientFrame::Presence { status, custom }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
        (text(), privacy())
            .prop_map(|(request_id, presence_privacy)| ClientFrame::Settings { request_id, presence_privacy }),
    ]
}

fn message_record() -> impl Strategy<Value = MessageRecord> {
    (conversation_id(), any::<u64>(), user_id(), device_id(), any::<u64>(), any::<u64>(), text()).prop_map(
        |(conversation, seq, sender, sender_device, client_seq, ts, body)| MessageRecord {
            conversation,
            seq,
            sender,
            sender_device,
            client_seq,
            ts,
            body,
        },
    )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let summary = (conversation_id(), any::<u64>(), users(), prop::option::of(text()))
        .prop_map(|(id, last_seq, members, title)| ConversationSummary { id, last_seq, members, title });
    let presence_status = select(vec![PresenceStatus::Online, PresenceStatus::Away, PresenceStatus::Offline]);
    prop_oneof![
        (user_id(), device_id(), prop::collection::vec(summary, 0..3))
            .prop_map(|(user, device, conversations)| ServerFrame::Welcome { user, device, conversations }),
        (conversation_id(), users(), prop::option::of(text()), prop::option::of(text()))
            .prop_map(|(id, members, title, request_id)| ServerFrame::Conversation { id, members, title, request_id }),
        message_record().prop_map(ServerFrame::Message),
        (conversation_id(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(conversation, client_seq, seq, ts)| ServerFrame::SendOk { conversation, client_seq, seq, ts }),
        (conversation_id(), user_id(), any::<u64>(), any::<u64>()).prop_map(|(conversation, user, delivered, read)| {
            ServerFrame::Receipt { conversation, user, delivered, read }
        }),
        (text(), conversation_id(), prop::collection::vec(message_record(), 0..3)).prop_map(
            |(request_id, conversation, messages)| ServerFrame::History { request_id, conversation, messages }
        ),
        (conversation_id(), user_id(), any::<bool>())
            .prop_map(|(conversation, user, active)| { ServerFrame::Typing { conversation, user, active } }),
        (user_id(), presence_status, prop::option::of(any::<u64>()), prop::option::of(text()))
            .prop_map(|(user, status, last_seen, custom)| ServerFrame::Presence { user, status, last_seen, custom }),
        (
            prop::option::of(text()),
            prop::option::of(conversation_id()),
            prop::option::of(any::<u64>()),
            select(ErrorCode::ALL.to_vec()),
            text(),
        )
            .prop_map(|(request_id, conversation, client_seq, code, message)| {
                let retry_after_ms = client_seq.map(|seq| seq % 1000);
                ServerFrame::Error { request_id, conversation, client_seq, code, message, retry_after_ms }
            }),
        any::<u64>().prop_map(|nonce| ServerFrame::Pong { nonce }),
        (text(), privacy())
            .prop_map(|(request_id, presence_privacy)| ServerFrame::Settings { request_id, presence_privacy }),
    ]
}

/// Every field name the frames use, so generated objects often hit real fields.
const FIELD_NAMES: [&str; 32] = [
    "type",
    "device",
    "resume",
    "request_id",
    "members",
    "title",
    "conversation",
    "client_seq",
    "body",
    "seq",
    "before",
    "limit",
    "active",
    "status",
    "custom",
    "nonce",
    "user",
    "conversations",
    "id",
    "last_seq",
    "sender",
    "sender_device",
    "ts",
    "delivered",
    "read",
    "messages",
    "last_seen",
    "code",
    "message",
    "extra",
    "presence_privacy",
    "retry_after_ms",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(FIELD_NAMES.to_vec()).prop_map(str::to_owned), 1 => ".{0,8}"]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..100).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("json numbers are finite", |float| {
            serde_json::Number::from_f64(float).map(Value::Number)
        }),
        ".{0,16}".prop_map(Value::String),
        "[a-z]{1,8}".prop_map(Value::String),
        conversation_id().prop_map(|id| Value::String(id.to_string())),
        select(vec!["active", "away", "online", "offline", "not_member", "too_large"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object whose `"type"` names a real frame, with arbitrary fields beside it.
fn typed_json_object() -> impl Strategy<Value = Value> {
    let names: Vec<&str> = CLIENT_FRAME_TYPES.iter().chain(SERVER_FRAME_TYPES.iter()).copied().collect();
    (select(names), prop::collection::btree_map(field_name(), json_value(), 0..8)).prop_map(|(name, fields)| {
        let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
        object.insert("type".to_owned(), Value::from(name));
        Value::Object(object)
    })
}

// ---- helpers ----

fn encoded<T: Serialize>(frames: &[T]) -> Vec<u8> {
    let mut stream = Vec::new();
    for frame in frames {
        encode_frame(frame, &mut stream).unwrap();
    }
    stream
}

/// Feeds `stream` to a fresh decoder in chunks whose sizes cycle through `chunk_sizes`,
/// draining it after every push, and returns every result it produced.
fn decode_stream<T: DeserializeOwned>(stream: &[u8], chunk_sizes: &[usize]) -> Vec<Result<T, FrameError>> {
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    let mut rest = stream;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap().clamp(1, rest.len());
        let taken = decoder.push(&rest[..size]);
        assert!(taken > 0 || decoder.free_bytes() == 0, "push takes nothing only when full");
        assert!(decoder.buffered_bytes() <= DECODER_BUFFER_BYTES_MAX);
        rest = &rest[taken..];
        loop {
            match decoder.next_frame::<T>() {
                Ok(Some(frame)) => results.push(Ok(frame)),
                Ok(None) => break,
                Err(error) => results.push(Err(error)),
            }
        }
    }
    results
}

fn is_decode_error(error: &FrameError) -> bool {
    matches!(error.code(), ErrorCode::BadFrame | ErrorCode::TooLarge)
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..48, 1..16)
}

/// A payload that cannot be a frame of an enum with `variants` variants: its first byte is a
/// one-byte varint tag naming no variant.
fn garbage_payload(variants: u8) -> impl Strategy<Value = Vec<u8>> {
    (variants..0x80u8, prop::collection::vec(any::<u8>(), 0..32)).prop_map(|(tag, mut tail)| {
        tail.insert(0, tag);
        tail
    })
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

// ---- properties ----

proptest! {
    #[test]
    fn client_frames_round_trip_both_encodings(frame in client_frame()) {
        let bytes = encoded(std::slice::from_ref(&frame));
        let length = u32::from_be_bytes(bytes[..LENGTH_PREFIX_BYTES].try_into().unwrap());
        prop_assert_eq!(length as usize, bytes.len() - LENGTH_PREFIX_BYTES);
        prop_assert_eq!(decode_payload::<ClientFrame>(&bytes[LENGTH_PREFIX_BYTES..]), Ok(frame.clone()));
        let json = encode_client(&frame);
        prop_assert_eq!(decode_client(&json), Ok(frame.clone()));
        let value: Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(frame.type_name()));
    }

    #[test]
    fn server_frames_round_trip_both_encodings(frame in server_frame()) {
        let bytes = encoded(std::slice::from_ref(&frame));
        prop_assert_eq!(decode_payload::<ServerFrame>(&bytes[LENGTH_PREFIX_BYTES..]), Ok(frame.clone()));
        let json = encode_server(&frame);
        prop_assert_eq!(decode_server(&json), Ok(frame.clone()));
        let value: Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(frame.type_name()));
    }

    #[test]
    fn chunking_never_changes_the_frames(
        client in prop::collection::vec(client_frame(), 1..6),
        server in prop::collection::vec(server_frame(), 1..6),
        sizes in chunk_sizes(),
    ) {
        let decoded: Vec<_> = decode_stream::<ClientFrame>(&encoded(&client), &sizes);
        prop_assert_eq!(decoded, client.into_iter().map(Ok).collect::<Vec<_>>());
        let decoded: Vec<_> = decode_stream::<ServerFrame>(&encoded(&server), &sizes);
        prop_assert_eq!(decoded, server.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bytes_only_produce_typed_errors(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        sizes in chunk_sizes(),
    ) {
        for result in decode_stream::<ClientFrame>(&bytes, &sizes) {
            if let Err(error) = result {
                prop_assert!(is_decode_error(&error), "{error:?}");
            }
        }
        for result in decode_stream::<ServerFrame>(&bytes, &sizes) {
            if let Err(error) = result {
                prop_assert!(is_decode_error(&error), "{error:?}");
            }
        }
    }

    #[test]
    fn arbitrary_payloads_yield_one_result_each(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
        sizes in chunk_sizes(),
    ) {
        // Well-framed garbage: every frame gives exactly one frame or one bad_frame, never
        // too_large, and the stream stays in step.
        let stream: Vec<u8> = payloads.iter().flat_map(|payload| framed(payload)).collect();
        let results = decode_stream::<ClientFrame>(&stream, &sizes);
        prop_assert_eq!(results.len(), payloads.len());
        for (result, payload) in results.iter().zip(&payloads) {
            match result {
                Ok(frame) => {
                    prop_assert!(!payload.is_empty());
                    let again = encoded(std::slice::from_ref(frame));
                    let decoded = decode_payload::<ClientFrame>(&again[LENGTH_PREFIX_BYTES..]);
                    prop_assert_eq!(decoded.as_ref(), Ok(frame));
                }
                Err(error) => prop_assert_eq!(error.code(), ErrorCode::BadFrame),
            }
        }
    }

    #[test]
    fn garbage_then_valid_frame_yields_bad_frame_then_the_frame(
        garbage in garbage_payload(9),
        frame in client_frame(),
        sizes in chunk_sizes(),
    ) {
        let mut stream = framed(&garbage);
        stream.extend(encoded(std::slice::from_ref(&frame)));
        let results = decode_stream::<ClientFrame>(&stream, &sizes);
        prop_assert_eq!(results.len(), 2);
        prop_assert_eq!(results[0].as_ref().map_err(FrameError::code), Err(ErrorCode::BadFrame));
        prop_assert_eq!(&results[1], &Ok(frame));
    }

    #[test]
    fn server_garbage_then_valid_frame_yields_bad_frame_then_the_frame(
        garbage in garbage_payload(10),
        frame in server_frame(),
        sizes in chunk_sizes(),
    ) {
        let mut stream = framed(&garbage);
        stream.extend(encoded(std::slice::from_ref(&frame)));
        let results = decode_stream::<ServerFrame>(&stream, &sizes);
        prop_assert_eq!(results.len(), 2);
        prop_assert_eq!(results[0].as_ref().map_err(FrameError::code), Err(ErrorCode::BadFrame));
        prop_assert_eq!(&results[1], &Ok(frame));
    }

    #[test]
    fn trailing_bytes_are_a_bad_frame_and_the_stream_goes_on(
        first in client_frame(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
        second in client_frame(),
        sizes in chunk_sizes(),
    ) {
        let mut payload = encoded(std::slice::from_ref(&first)).split_off(LENGTH_PREFIX_BYTES);
        payload.extend(&extra);
        let mut stream = framed(&payload);
        stream.extend(encoded(std::slice::from_ref(&second)));
        let results = decode_stream::<ClientFrame>(&stream, &sizes);
        prop_assert_eq!(results.len(), 2);
        prop_assert_eq!(results[0].as_ref().map_err(FrameError::code), Err(ErrorCode::BadFrame));
        prop_assert_eq!(&results[1], &Ok(second));
    }

    #[test]
    fn arbitrary_text_never_panics_json_decoding(text in any::<String>()) {
        for result in [decode_client(&text).map(|_| ()), decode_server(&text).map(|_| ())] {
            if let Err(error) = result {
                prop_assert_eq!(error.code(), ErrorCode::BadFrame);
            }
        }
    }

    #[test]
    fn json_like_text_never_panics_json_decoding(
        text in r#"\{("type":"(ping|pong|send|hello|history|presence|message|error)",?)?("[a-z_]{1,12}":[0-9a-z"\[\]{},.-]{0,16},?){0,4}\}"#,
    ) {
        for result in [decode_client(&text).map(|_| ()), decode_server(&text).map(|_| ())] {
            if let Err(error) = result {
                prop_assert_eq!(error.code(), ErrorCode::BadFrame);
            }
        }
    }

    #[test]
    fn arbitrary_json_values_decode_or_fail_typed(value in prop_oneof![json_value(), typed_json_object()]) {
        let text = value.to_string();
        match decode_client(&text) {
            // Whatever is accepted re-encodes to something that decodes to the same frame.
            Ok(frame) => prop_assert_eq!(decode_client(&encode_client(&frame)), Ok(frame)),
            Err(error) => prop_assert_eq!(error.code(), ErrorCode::BadFrame),
        }
        match decode_server(&text) {
            Ok(frame) => prop_assert_eq!(decode_server(&encode_server(&frame)), Ok(frame)),
            Err(error) => prop_assert_eq!(error.code(), ErrorCode::BadFrame),
        }
    }
}

proptest! {
    // Each case streams over a mebibyte, so fewer cases keep the suite fast.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn oversized_length_yields_too_large_then_the_next_frame(
        over in 1usize..=4096,
        filler in any::<u8>(),
        chunk in 1000usize..300_000,
        frame in client_frame(),
    ) {
        let length = FRAME_BYTES_MAX + over;
        let mut stream = (length as u32).to_be_bytes().to_vec();
        stream.resize(LENGTH_PREFIX_BYTES + length, filler);
        stream.extend(encoded(std::slice::from_ref(&frame)));
        let results = decode_stream::<ClientFrame>(&stream, &[chunk]);
        prop_assert_eq!(
            results,
            vec![Err(FrameError::FrameTooLarge { length: length as u64, max: FRAME_BYTES_MAX }), Ok(frame)]
        );
    }
}

#[test]
fn resume_map_order_does_not_matter_in_json() {
    // BTreeMap keys are ordered by bytes; JSON object keys may come in any order.
    let low = ConversationId::from_bytes([0; 16]);
    let high = ConversationId::from_bytes([0xff; 16]);
    let text = format!(r#"{{"type":"hello","device":"d","resume":{{"{high}":2,"{low}":1}}}}"#);
    let expected = ClientFrame::Hello {
        device: DeviceId::new("d").unwrap(),
        resume: BTreeMap::from([(low, 1), (high, 2)]),
        token: None,
    };
    assert_eq!(decode_client(&text), Ok(expected));
}
