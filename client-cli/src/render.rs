//! Output of the messaging commands (`create`, `send`, `tail`, `history`, `conversations`):
//! one line per thing for people, or one JSON object per line (`--json`) in the protocol's
//! JSON mapping (docs/PROTOCOL.md), so scripts read the same shapes a browser does.

use std::collections::BTreeMap;

use natter_client::{ConversationInfo, SendOk};
use natter_proto::json::encode_server;
use natter_proto::{ConversationId, ConversationSummary, MessageRecord, PresenceStatus, ServerFrame, UserId};

use crate::table::render_table;

/// `ts` (milliseconds since the Unix epoch) as UTC `YYYY-MM-DD HH:MM:SSZ`.
pub fn format_ts(ts: u64) -> String {
    let seconds = ts / 1000;
    let (days, day_seconds) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        day_seconds / 3600,
        day_seconds % 3600 / 60,
        day_seconds % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// How `tail` names a conversation: its title, else its members, else its id.
pub fn conversation_label(summary: Option<&ConversationSummary>, id: ConversationId) -> String {
    match summary {
        Some(ConversationSummary { title: Some(title), .. }) => title.clone(),
        Some(summary) if !summary.members.is_empty() => {
            summary.members.iter().map(UserId::as_str).collect::<Vec<_>>().join(",")
        }
        _ => id.to_string(),
    }
}

/// A message for people: `#SEQ  TIME  SENDER: BODY`, prefixed with `[LABEL] ` when given;
/// further lines of the body are indented.
pub fn render_message(message: &MessageRecord, label: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(label) = label {
        out.push_str(&format!("[{label}] "));
    }
    out.push_str(&format!("#{}  {}  {}:", message.seq, format_ts(message.ts), message.sender));
    let mut lines = message.body.split('\n');
    let first = lines.next().unwrap_or("");
    if !first.is_empty() {
        out.push(' ');
        out.push_str(first);
    }
    out.push('\n');
    for line in lines {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A message as one JSON line: the protocol's `message` frame.
pub fn json_message(message: &MessageRecord) -> String {
    format!("{}\n", encode_server(&ServerFrame::Message(message.clone())))
}

/// A receipt for people.
pub fn render_receipt(label: &str, user: &UserId, delivered: u64, read: u64) -> String {
    format!("[{label}] {user} has received up to #{delivered} and read up to #{read}\n")
}

/// A receipt as one JSON line: the protocol's `receipt` frame.
pub fn json_receipt(conversation: ConversationId, user: &UserId, delivered: u64, read: u64) -> String {
    let frame = ServerFrame::Receipt { conversation, user: user.clone(), delivered, read };
    format!("{}\n", encode_server(&frame))
}

/// A typing signal for people.
pub fn render_typing(label: &str, user: &UserId, active: bool) -> String {
    if active {
        format!("[{label}] {user} is typing\n")
    } else {
        format!("[{label}] {user} stopped typing\n")
    }
}

/// A typing signal as one JSON line: the protocol's `typing` frame.
pub fn json_typing(conversation: ConversationId, user: &UserId, active: bool) -> String {
    format!("{}\n", encode_server(&ServerFrame::Typing { conversation, user: user.clone(), active }))
}

/// A presence change for people.
pub fn render_presence(user: &UserId, status: PresenceStatus, last_seen: Option<u64>, custom: Option<&str>) -> String {
    let status = match status {
        PresenceStatus::Online => "online".to_owned(),
        PresenceStatus::Away => "away".to_owned(),
        PresenceStatus::Offline => match last_seen {
            Some(ts) => format!("offline, last seen {}", format_ts(ts)),
            None => "offline".to_owned(),
        },
    };
    match custom {
        Some(custom) => format!("{user} is {status} ({custom})\n"),
        None => format!("{user} is {status}\n"),
    }
}

/// A presence change as one JSON line: the protocol's `presence` frame.
pub fn json_presence(user: &UserId, status: PresenceStatus, last_seen: Option<u64>, custom: Option<&str>) -> String {
    let frame = ServerFrame::Presence { user: user.clone(), status, last_seen, custom: custom.map(str::to_owned) };
    format!("{}\n", encode_server(&frame))
}

/// A committed send for people.
pub fn render_send_ok(ok: &SendOk) -> String {
    format!("sent #{} to {} at {} (client_seq {})\n", ok.seq, ok.conversation, format_ts(ok.ts), ok.client_seq)
}

/// A committed send as one JSON line: the protocol's `send_ok` frame.
pub fn json_send_ok(ok: &SendOk) -> String {
    let frame =
        ServerFrame::SendOk { conversation: ok.conversation, client_seq: ok.client_seq, seq: ok.seq, ts: ok.ts };
    format!("{}\n", encode_server(&frame))
}

/// A created conversation for people.
pub fn render_created(info: &ConversationInfo) -> String {
    let members = info.members.iter().map(UserId::as_str).collect::<Vec<_>>().join(", ");
    match &info.title {
        Some(title) => format!("created {} {title:?} with {members}\n", info.id),
        None => format!("created {} with {members}\n", info.id),
    }
}

/// A created conversation as one JSON line: the protocol's `conversation` frame.
pub fn json_created(info: &ConversationInfo) -> String {
    let frame = ServerFrame::Conversation {
        id: info.id,
        members: info.members.clone(),
        title: info.title.clone(),
        request_id: None,
    };
    format!("{}\n", encode_server(&frame))
}

/// How `tail` names a conversation it was just added to (as [`conversation_label`] does).
pub fn joined_label(info: &ConversationInfo) -> String {
    let summary =
        ConversationSummary { id: info.id, last_seq: 0, members: info.members.clone(), title: info.title.clone() };
    conversation_label(Some(&summary), info.id)
}

/// A conversation the user was added to while `tail` ran, for people:
/// `[LABEL] added to ID with MEMBERS`; its messages follow from #1.
pub fn render_joined(info: &ConversationInfo) -> String {
    let members = info.members.iter().map(UserId::as_str).collect::<Vec<_>>().join(", ");
    format!(
        "[{}] added to {} with {members}
",
        joined_label(info),
        info.id
    )
}

/// A conversation the user was added to, as one JSON line: the protocol's unsolicited
/// `conversation` frame (`request_id` null).
pub fn json_joined(info: &ConversationInfo) -> String {
    json_created(info)
}

/// The user's conversations for people, as a table.
pub fn render_conversations(conversations: &[ConversationSummary]) -> String {
    if conversations.is_empty() {
        return "no conversations yet; start one with `natter create --members NAME`\n".into();
    }
    let rows: Vec<Vec<String>> = conversations
        .iter()
        .map(|summary| {
            vec![
                summary.id.to_string(),
                summary.last_seq.to_string(),
                summary.members.iter().map(UserId::as_str).collect::<Vec<_>>().join(","),
                summary.title.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_table(&["CONVERSATION", "LAST SEQ", "MEMBERS", "TITLE"], &rows)
}

/// The user's conversations, one JSON object per line (the `welcome` frame's entries).
pub fn json_conversations(conversations: &[ConversationSummary]) -> String {
    conversations
        .iter()
        .map(|summary| format!("{}\n", serde_json::to_string(summary).expect("summaries serialise")))
        .collect()
}

/// A page of history for people, or a line saying it is empty.
pub fn render_history(conversation: ConversationId, messages: &[MessageRecord]) -> String {
    if messages.is_empty() {
        return format!("no messages in {conversation} in that range\n");
    }
    messages.iter().map(|message| render_message(message, None)).collect()
}

/// Labels for `tail`, by conversation.
pub fn labels(conversations: &[ConversationSummary]) -> BTreeMap<ConversationId, String> {
    conversations.iter().map(|summary| (summary.id, conversation_label(Some(summary), summary.id))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_ts(1_764_288_000_000), "2025-11-28 00:00:00Z");
        assert_eq!(format_ts(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03Z");
        assert_eq!(format_ts(4_107_542_399_999), "2100-02-28 23:59:59Z");
    }

    #[test]
    fn signals_read_as_sentences_and_as_protocol_json() {
        let bob = UserId::new("bob").unwrap();
        assert_eq!(render_typing("plans", &bob, true), "[plans] bob is typing\n");
        assert_eq!(render_typing("plans", &bob, false), "[plans] bob stopped typing\n");
        assert_eq!(render_presence(&bob, PresenceStatus::Online, None, Some("at lunch")), "bob is online (at lunch)\n");
        assert_eq!(
            render_presence(&bob, PresenceStatus::Offline, Some(1_764_288_000_000), None),
            "bob is offline, last seen 2025-11-28 00:00:00Z\n"
        );
        assert_eq!(render_presence(&bob, PresenceStatus::Offline, None, None), "bob is offline\n");
        let conversation = ConversationId::from_bytes([1; 16]);
        assert!(json_typing(conversation, &bob, true).starts_with(r#"{"type":"typing","#));
        assert!(json_presence(&bob, PresenceStatus::Away, None, None).contains(r#""status":"away""#));
    }
}
