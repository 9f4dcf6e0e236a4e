//! The messaging commands of `natter` (`create`, `send`, `tail`, `history`, `conversations`):
//! each connects a [`Client`], does its work and closes it. They take plain options
//! ([`Connection`], one struct per command, [`Format`]); `cli` fills them from its arguments,
//! so this module knows nothing of argument parsing.
//!
//! `send` and `tail` keep the device's state file (cursors and the next `client_seq`, a
//! [`FileCursors`]): `send` so that two runs never reuse a `client_seq` (the server would take
//! the second for a resend and drop its body), `tail` so that it resumes where it stopped.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_client::{Client, ClientConfig, CursorStore, Event, FileCursors, MemoryCursors, SendOk};
use natter_proto::{ConversationId, DeviceId, UserId};

use crate::error::Error;
use crate::render;

/// QUIC address of the `natter-node --dev` node.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7401";
/// The CA a `natter-node --dev` started in the current directory writes.
pub const DEV_CA_FILE: &str = "natter-data/tls/ca.pem";
/// Sends `natter send -` keeps in flight at once.
pub const SEND_WINDOW: usize = 64;
/// Lines read from stdin ahead of the sends.
const STDIN_LINES_AHEAD: usize = 256;

/// How a messaging command reaches the cluster and who it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// QUIC addresses (`HOST:PORT`) of any nodes, tried in order; empty: [`DEFAULT_SERVER`].
    pub servers: Vec<String>,
    /// The user's token; required.
    pub token: Option<String>,
    /// The cluster CA certificate file; `None`: [`DEV_CA_FILE`] if it exists.
    pub ca: Option<PathBuf>,
    /// This device's id: cursors and `client_seq`s are kept per device.
    pub device: String,
}

/// How a command prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per thing, for people.
    Human,
    /// One JSON object per line, the protocol's JSON frames.
    Json,
}

/// What `natter create` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// The other members' user ids (the caller is always a member).
    pub members: Vec<String>,
    /// A title; makes a group even with one other member.
    pub title: Option<String>,
}

/// What `natter send` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// The conversation id, as printed.
    pub conversation: String,
    /// The message; `-` sends each line of stdin as a message.
    pub text: String,
    /// The device's state file; `None`: [`default_cursor_file`].
    pub cursors: Option<PathBuf>,
}

/// What `natter tail` follows and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailOptions {
    /// The device's state file, which tail resumes from; `None`: [`default_cursor_file`].
    pub cursors: Option<PathBuf>,
    /// Stop after printing this many messages; `None`: run until interrupted.
    pub count: Option<u64>,
    /// Also print delivery and read receipts.
    pub receipts: bool,
    /// Also print typing and presence.
    pub signals: bool,
}

/// Which page `natter history` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// The conversation id, as printed.
    pub conversation: String,
    /// Most messages to print.
    pub limit: u32,
    /// Only messages with seq below this; `None`: the newest.
    pub before: Option<u64>,
}

/// The client configuration `connection` describes.
pub fn client_config(connection: &Connection) -> Result<ClientConfig, Error> {
    let servers =
        if connection.servers.is_empty() { vec![DEFAULT_SERVER.to_string()] } else { connection.servers.clone() };
    let mut addresses = Vec::new();
    for server in servers.iter().map(|server| server.trim()).filter(|server| !server.is_empty()) {
        addresses.push(resolve(server)?);
    }
    let token = connection.token.clone().filter(|token| !token.trim().is_empty()).ok_or_else(|| {
        Error::Usage(
            "no token: give --token or NATTER_TOKEN (mint one with `natter token --user NAME --data-dir natter-data`)"
                .into(),
        )
    })?;
    let ca = match &connection.ca {
        Some(path) => path.clone(),
        None if Path::new(DEV_CA_FILE).is_file() => PathBuf::from(DEV_CA_FILE),
        None => {
            return Err(Error::Usage(format!(
                "no cluster CA: give --ca FILE or NATTER_CA ({DEV_CA_FILE} of a `natter-node --dev` run here, or DIR/tls/ca.pem of `natter cluster up`)"
            )))
        }
    };
    let ca_pem = std::fs::read(&ca).map_err(Error::io("cannot read", &ca))?;
    let device = DeviceId::new(connection.device.clone()).map_err(|error| Error::Usage(error.to_string()))?;
    Ok(ClientConfig::new(addresses, ca_pem, token.trim(), device))
}

fn resolve(server: &str) -> Result<SocketAddr, Error> {
    let bad = |reason: String| Error::BadAddress { address: server.to_string(), reason };
    let mut found = server.to_socket_addrs().map_err(|error| bad(format!("{error}; expected HOST:PORT")))?;
    found.next().ok_or_else(|| bad("resolves to no address".into()))
}

/// The user a token names (its `sub` claim), read without checking the signature: only to
/// name the default cursor file. The server checks the token.
pub fn token_subject(token: &str) -> Option<UserId> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    UserId::new(claims.get("sub")?.as_str()?).ok()
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// Where `send` and `tail` keep a device's state when `--cursors` is not given:
/// `$HOME/.natter/cursors-CLUSTER-USER-DEVICE.json`, or `./natter-cursors-…` without a home
/// directory. The device is part of the name because cursors and `client_seq`s are the
/// device's; CLUSTER (a hash of the cluster CA) because a new cluster, say a fresh `--dev`
/// data dir, restarts every conversation at seq 1 and must not inherit old cursors.
pub fn default_cursor_file(home: Option<&Path>, cluster: &str, user: &UserId, device: &str) -> PathBuf {
    let name = format!("cursors-{cluster}-{user}-{device}.json");
    match home.filter(|home| !home.as_os_str().is_empty()) {
        Some(home) => home.join(".natter").join(name),
        None => PathBuf::from(format!("natter-{name}")),
    }
}

/// A short name for the cluster whose CA is `ca_pem`.
pub fn cluster_tag(ca_pem: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(ca_pem).iter().take(4).map(|byte| format!("{byte:02x}")).collect()
}

fn cursor_store(connection: &Connection, ca_pem: &[u8], explicit: Option<&Path>) -> Result<FileCursors, Error> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let token = connection.token.as_deref().unwrap_or_default();
            let user = token_subject(token).ok_or_else(|| {
                Error::Usage("the token names no user (not a JWT with a `sub` claim); give --cursors FILE".into())
            })?;
            let home = std::env::var_os("HOME").map(PathBuf::from);
            default_cursor_file(home.as_deref(), &cluster_tag(ca_pem), &user, &connection.device)
        }
    };
    Ok(FileCursors::open(path)?)
}

fn parse_conversation(text: &str) -> Result<ConversationId, Error> {
    ConversationId::parse(text.trim()).map_err(|error| Error::Usage(error.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|source| Error::Io {
        action: "cannot start",
        path: PathBuf::from("the async runtime"),
        source,
    })
}

async fn connect(config: ClientConfig, store: Box<dyn CursorStore>) -> Result<Client, Error> {
    Ok(Client::connect(config, store).await?)
}

fn write(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(Error::Output)
}

/// `natter create`.
pub fn create(
    connection: &Connection,
    options: CreateOptions,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut config = client_config(connection)?;
    config.receive_messages = false;
    let members = options
        .members
        .iter()
        .map(|member| UserId::new(member.trim()).map_err(|error| Error::Usage(error.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    runtime()?.block_on(async {
        let client = connect(config, Box::new(MemoryCursors::new())).await?;
        let created = client.create_conversation(members, options.title).await;
        client.close().await;
        let created = created?;
        let text = match format {
            Format::Human => render::render_created(&created),
            Format::Json => render::json_created(&created),
        };
        write(out, &text)
    })
}

/// `natter send`: one message, or one per line of stdin for `-`.
pub fn send(connection: &Connection, options: SendOptions, format: Format, out: &mut dyn Write) -> Result<(), Error> {
    let conversation = parse_conversation(&options.conversation)?;
    let mut config = client_config(connection)?;
    config.receive_messages = false;
    let store = cursor_store(connection, &config.ca_pem, options.cursors.as_deref())?;
    let render = |ok: &SendOk| match format {
        Format::Human => render::render_send_ok(ok),
        Format::Json => render::json_send_ok(ok),
    };
    runtime()?.block_on(async {
        let client = connect(config, Box::new(store)).await?;
        let result = if options.text == "-" {
            send_lines(&client, conversation, out, &render).await
        } else {
            match client.send(conversation, options.text).await {
                Ok(ok) => write(out, &render(&ok)),
                Err(error) => Err(error.into()),
            }
        };
        client.close().await;
        result
    })
}

/// Sends each line of stdin as a message, in order and up to [`SEND_WINDOW`] at a time,
/// printing each result in order; stops at the first failure.
async fn send_lines(
    client: &Client,
    conversation: ConversationId,
    out: &mut dyn Write,
    render: &dyn Fn(&SendOk) -> String,
) -> Result<(), Error> {
    // Stdin is read on a thread of its own: a blocking read must not hold up the runtime,
    // and lines typed by hand go out as they are entered.
    let (lines_in, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(STDIN_LINES_AHEAD);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if lines_in.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut in_flight = VecDeque::new();
    let mut reading = true;
    loop {
        while reading && in_flight.len() < SEND_WINDOW {
            // Wait for a line only when nothing is in flight; otherwise take what is there.
            let line = if in_flight.is_empty() {
                lines.recv().await
            } else {
                match lines.try_recv() {
                    Ok(line) => Some(line),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match line {
                None => reading = false,
                Some(Err(source)) => {
                    return Err(Error::Io { action: "cannot read", path: PathBuf::from("stdin"), source })
                }
                // Submitted from this one task, the sends are appended in line order.
                Some(Ok(line)) => match client.submit(conversation, line).await {
                    Ok(queued) => in_flight.push_back(queued),
                    Err(error) => {
                        // Report the lines already on their way before the one that failed.
                        for queued in in_flight {
                            write(out, &render(&queued.wait().await?))?;
                        }
                        return Err(error.into());
                    }
                },
            }
        }
        let Some(next) = in_flight.pop_front() else { return Ok(()) };
        write(out, &render(&next.wait().await?))?;
    }
}

/// `natter history`.
pub fn history(
    connection: &Connection,
    options: HistoryOptions,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let conversation = parse_conversation(&options.conversation)?;
    let mut config = client_config(connection)?;
    config.receive_messages = false;
    runtime()?.block_on(async {
        let client = connect(config, Box::new(MemoryCursors::new())).await?;
        let page = client.history(conversation, options.before, options.limit).await;
        client.close().await;
        let page = page?;
        let text = match format {
            Format::Human => render::render_history(conversation, &page),
            Format::Json => page.iter().map(render::json_message).collect(),
        };
        write(out, &text)
    })
}

/// `natter conversations`.
pub fn conversations(connection: &Connection, format: Format, out: &mut dyn Write) -> Result<(), Error> {
    let mut config = client_config(connection)?;
    config.receive_messages = false;
    runtime()?.block_on(async {
        let client = connect(config, Box::new(MemoryCursors::new())).await?;
        let list = client.conversations();
        client.close().await;
        let text = match format {
            Format::Human => render::render_conversations(&list),
            Format::Json => render::json_conversations(&list),
        };
        write(out, &text)
    })
}

/// `natter tail`: prints messages as they arrive until `--count` messages were printed or
/// Ctrl-C, and a line for each conversation the user is added to meanwhile (its messages
/// follow from #1); connection changes and errors go to `progress`.
pub fn tail(
    connection: &Connection,
    options: TailOptions,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), Error> {
    let config = client_config(connection)?;
    let store = cursor_store(connection, &config.ca_pem, options.cursors.as_deref())?;
    let json = format == Format::Json;
    runtime()?.block_on(async {
        let client = connect(config, Box::new(store)).await?;
        let mut labels = render::labels(&client.conversations());
        let mut printed = 0u64;
        let result = loop {
            if options.count.is_some_and(|count| printed >= count) {
                break Ok(());
            }
            let event = tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => break Ok(()),
                event = client.next_event() => event,
            };
            let Some(event) = event else {
                break Err(Error::Usage("the connection is gone and the client gave up reconnecting".into()));
            };
            let label = |labels: &std::collections::BTreeMap<ConversationId, String>, id: ConversationId| {
                labels.get(&id).cloned().unwrap_or_else(|| id.to_string())
            };
            let (text, to_out) = match &event {
                Event::Message(message) => {
                    printed += 1;
                    let text = if json {
                        render::json_message(message)
                    } else {
                        render::render_message(message, Some(&label(&labels, message.conversation)))
                    };
                    (text, true)
                }
                Event::Receipt { conversation, user, delivered, read } if options.receipts => {
                    let text = if json {
                        render::json_receipt(*conversation, user, *delivered, *read)
                    } else {
                        render::render_receipt(&label(&labels, *conversation), user, *delivered, *read)
                    };
                    (text, true)
                }
                Event::Conversation(info) => {
                    labels.insert(info.id, render::joined_label(info));
                    let text = if json { render::json_joined(info) } else { render::render_joined(info) };
                    (text, true)
                }
                Event::Connected { node } => {
                    // Keeps the labels of conversations joined since the last welcome.
                    labels.extend(render::labels(&client.conversations()));
                    (format!("natter: connected to {node} as {}\n", client.user()), false)
                }
                // Typing and presence are signals, printed only when asked for (--signals).
                Event::Typing { conversation, user, active } if options.signals => {
                    let text = if json {
                        render::json_typing(*conversation, user, *active)
                    } else {
                        render::render_typing(&label(&labels, *conversation), user, *active)
                    };
                    (text, true)
                }
                Event::Presence { user, status, last_seen, custom } if options.signals => {
                    let text = if json {
                        render::json_presence(user, *status, *last_seen, custom.as_deref())
                    } else {
                        render::render_presence(user, *status, *last_seen, custom.as_deref())
                    };
                    (text, true)
                }
                Event::Disconnected { reason } => (format!("natter: disconnected: {reason}\n"), false),
                Event::Error { code, message, .. } => (format!("natter: server error ({code}): {message}\n"), false),
                _ => continue,
            };
            if to_out {
                if let Err(error) = write(out, &text) {
                    break Err(error);
                }
            } else {
                let _ = write(progress, &text);
            }
        };
        // Cursors are already in the file; closing sends the last acks.
        tokio::time::timeout(Duration::from_secs(3), client.close()).await.ok();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_subjects_are_read_from_the_payload() {
        let key = natter_node::auth::TokenKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let token = key.issue(&UserId::new("alice_1.x").unwrap(), 0, 60);
        assert_eq!(token_subject(&token), Some(UserId::new("alice_1.x").unwrap()));
        assert_eq!(token_subject("not-a-token"), None);
        assert_eq!(token_subject("a.!!!.c"), None);
        assert_eq!(base64url_decode("aGk_-w").unwrap(), [b'h', b'i', 0x3f, 0xfb]);
    }

    #[test]
    fn default_cursor_files_are_per_user_and_device() {
        let alice = UserId::new("alice").unwrap();
        assert_eq!(
            default_cursor_file(Some(Path::new("/home/a")), "0a1b2c3d", &alice, "cli"),
            PathBuf::from("/home/a/.natter/cursors-0a1b2c3d-alice-cli.json")
        );
        assert_eq!(
            default_cursor_file(None, "0a1b2c3d", &alice, "cli"),
            PathBuf::from("natter-cursors-0a1b2c3d-alice-cli.json")
        );
        assert_eq!(cluster_tag(b"ca one").len(), 8);
        assert_ne!(cluster_tag(b"ca one"), cluster_tag(b"ca two"), "another cluster, other cursors");
    }
}
