//! The simulated clients: who talks to whom ([`Plan`], drawn from the seed), and what each
//! device does ([`device`]): connect through `natter-client` over the simulated network,
//! create its conversations, then send, read history and reconnect at random until told to
//! stop, recording everything it invokes and is handed into the run's [`History`].
//!
//! Every device is its own turmoil client (its own address, so links to it can be cut). The
//! devices and the harness's step loop share one [`Shared`] state; turmoil runs every host on
//! the simulation thread, so the lock is never contended and its order is the simulation's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use natter_check::{History, Observer, ReadView, SendOutcome, SendRecord};
use natter_client::{Client, ClientConfig, ClientError, CursorState, Event, MemoryCursors};
use natter_proto::{ConversationId, DeviceId, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::env::{client_endpoints, node_name, PEER_PORT};
use crate::run_config::RunConfig;

/// How long a token handed to a simulated device stays valid, seconds (far beyond any run).
const TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Wait between polls of the shared state while a device waits for the others.
const BARRIER_POLL: Duration = Duration::from_millis(10);
/// Wait before trying again after a failed connect or create.
const SETUP_RETRY: Duration = Duration::from_millis(250);
/// Longest a device sleeps between looks at whether the workload is over.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Messages per history read.
const HISTORY_PAGE_MESSAGES: u32 = 50;

/// A conversation of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPlan {
    /// Indexes of the member users; the first creates it.
    pub members: Vec<usize>,
    /// `None` for a 1:1 conversation (two members, the deterministic id), a title for groups.
    pub title: Option<String>,
}

/// A device of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Its number, 0.. over all devices.
    pub index: usize,
    /// Who it is.
    pub observer: Observer,
    /// Indexes of the conversations its user is in.
    pub conversations: Vec<usize>,
    /// Indexes of the conversations it creates (its user's first device creates them).
    pub creates: Vec<usize>,
}

/// Users, their devices and their conversations, drawn from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every device.
    pub devices: Vec<DevicePlan>,
    /// Every conversation.
    pub conversations: Vec<ConversationPlan>,
}

/// User `index`'s id.
pub fn user(index: usize) -> UserId {
    UserId::new(format!("u{index}")).expect("valid user id")
}

/// The turmoil host name of device `index`.
pub fn device_host(index: usize) -> String {
    format!("client{index}")
}

impl Plan {
    /// Draws the plan: each user gets `devices_per_user_min..=max` devices; each conversation
    /// `group_size_min..=max` distinct members. A two-member conversation is a 1:1 unless its
    /// pair already has one (1:1 ids are per pair), in which case it becomes a titled group.
    pub fn draw(seed: u64, config: &RunConfig) -> Plan {
        assert!(config.users >= 2, "conversations need two users");
        assert!(config.group_size_min >= 2 && config.group_size_min <= config.group_size_max);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x706c_616e);
        let mut conversations = Vec::new();
        let mut pairs = BTreeSet::new();
        for number in 0..config.conversations {
            let size = rng.random_range(config.group_size_min..=config.group_size_max).min(config.users);
            let mut members: Vec<usize> = Vec::new();
            while members.len() < size {
                let candidate = rng.random_range(0..config.users);
                if !members.contains(&candidate) {
                    members.push(candidate);
                }
            }
            let direct = size == 2 && pairs.insert((members[0].min(members[1]), members[0].max(members[1])));
            let title = if direct { None } else { Some(format!("group {number}")) };
            conversations.push(ConversationPlan { members, title });
        }
        let mut devices = Vec::new();
        for user_index in 0..config.users {
            let count = rng.random_range(config.devices_per_user_min..=config.devices_per_user_max);
            for device in 0..count {
                let in_it = |plan: &ConversationPlan| plan.members.contains(&user_index);
                let joined: Vec<usize> = (0..conversations.len()).filter(|&c| in_it(&conversations[c])).collect();
                let creates = if device == 0 {
                    joined.iter().copied().filter(|&c| conversations[c].members[0] == user_index).collect()
                } else {
                    Vec::new()
                };
                devices.push(DevicePlan {
                    index: devices.len(),
                    observer: Observer {
                        user: user(user_index),
                        device: DeviceId::new(format!("d{device}")).expect("valid device id"),
                    },
                    conversations: joined,
                    creates,
                });
            }
        }
        Plan { devices, conversations }
    }
}

/// Where a run is, as the devices and the harness's step loop see it.
#[derive(Debug, Default)]
pub struct Shared {
    /// Everything recorded for the checkers.
    pub history: History,
    /// Every recorded event with its simulated time, in order; hashed into the trace hash.
    pub trace: Vec<String>,
    /// Devices connected for the first time.
    pub connected: usize,
    /// The ids the conversations got, by plan index.
    pub conversation_ids: BTreeMap<usize, ConversationId>,
    /// Devices that know all their conversations and wait to start.
    pub ready: usize,
    /// When sending started (every device ready), simulated milliseconds.
    pub workload_started_ms: Option<u64>,
    /// Set by the harness: stop invoking operations.
    pub stop_sending: bool,
    /// Devices that stopped invoking operations.
    pub stopped: usize,
    /// Set by the harness: the run is over, devices return.
    pub finish: bool,
    /// Sends invoked so far.
    pub sends_invoked: usize,
    /// Sends invoked and not answered yet, by invocation number.
    pub pending: BTreeMap<usize, SendRecord>,
    /// History reads done.
    pub reads: usize,
    /// Reconnects asked for.
    pub reconnects: usize,
}

/// The state shared by the devices and the harness.
#[derive(Debug, Clone, Default)]
pub struct SharedState(Arc<Mutex<Shared>>);

impl SharedState {
    /// Locks it.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().expect("shared state lock")
    }

    /// Records a trace line stamped with the current simulated time.
    pub fn trace(&self, line: impl std::fmt::Display) {
        let at = now_ms();
        self.lock().trace.push(format!("{at} {line}"));
    }
}

/// Simulated milliseconds since the run began.
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// What a device needs besides its plan.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// The run's seed.
    pub seed: u64,
    /// The run's configuration.
    pub config: RunConfig,
    /// The whole plan (for member lists and the device count).
    pub plan: Arc<Plan>,
    /// The cluster's CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The secret node tokens are signed with.
    pub jwt_secret: String,
    /// Shared state.
    pub shared: SharedState,
}

/// Runs device `index` of the plan until the harness says the run is over.
pub async fn device(index: usize, context: DeviceContext) -> turmoil::Result {
    let DeviceContext { seed, config, plan, ca_pem, jwt_secret, shared } = context;
    let me = plan.devices[index].clone();
    let observer = me.observer.clone();
    let client = Arc::new(connect(index, &config, seed, &plan, &ca_pem, &jwt_secret, &shared).await);
    shared.lock().connected += 1;
    shared.trace(format!("{observer} connected"));

    // Record every event; conversations learnt by event count as known.
    let known: Arc<Mutex<BTreeSet<ConversationId>>> = Arc::default();
    {
        let (client, shared, observer, known) = (client.clone(), shared.clone(), observer.clone(), known.clone());
        tokio::spawn(async move {
            while let Some(event) = client.next_event().await {
                record_event(&shared, &observer, &known, event);
            }
        });
    }

    // Every device is connected before any conversation exists, so each learns its
    // conversations as they are created, from seq 0.
    wait_until(&shared, |state| state.connected == plan.devices.len()).await;
    for &conversation in &me.creates {
        let members: Vec<UserId> = plan.conversations[conversation].members[1..].iter().map(|&m| user(m)).collect();
        let title = plan.conversations[conversation].title.clone();
        let info = loop {
            match client.create_conversation(members.clone(), title.clone()).await {
                Ok(info) => break info,
                // A group whose create was interrupted may exist unused; it has no messages,
                // so the checkers never see it.
                Err(error) => {
                    shared.trace(format!("{observer} create {conversation} failed: {error}"));
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            }
        };
        shared.trace(format!("{observer} created {conversation} as {}", info.id));
        shared.lock().conversation_ids.insert(conversation, info.id);
        // The creator's answer is the conversation itself, not an event.
        known.lock().expect("known").insert(info.id);
    }
    wait_until(&shared, |state| state.conversation_ids.len() == plan.conversations.len()).await;
    let conversations: Vec<ConversationId> = {
        let state = shared.lock();
        me.conversations.iter().map(|index| state.conversation_ids[index]).collect()
    };
    // Known from a welcome (the client starts a cursor for it) or from an event.
    loop {
        let cursors = client.cursors();
        let learnt = known.lock().expect("known").clone();
        if conversations.iter().all(|id| cursors.contains_key(id) || learnt.contains(id)) {
            break;
        }
        tokio::time::sleep(BARRIER_POLL).await;
    }
    {
        let mut state = shared.lock();
        for &conversation in &conversations {
            state.history.starts.insert((observer.clone(), conversation), 0);
        }
        state.ready += 1;
    }
    wait_until(&shared, |state| state.ready == plan.devices.len()).await;
    {
        let mut state = shared.lock();
        if state.workload_started_ms.is_none() {
            state.workload_started_ms = Some(now_ms());
        }
    }
    shared.trace(format!("{observer} starts"));

    if !conversations.is_empty() {
        operate(index, seed, &config, &client, &observer, &conversations, &shared).await;
    }
    shared.lock().stopped += 1;
    shared.trace(format!("{observer} stopped"));
    wait_until(&shared, |state| state.finish).await;
    Ok(())
}

/// Connects, retrying until a node answers (the cluster may still be electing leaders, or a
/// node may be down). Device `index` tries the nodes starting from its own, so sessions
/// spread over the cluster.
async fn connect(
    index: usize,
    config: &RunConfig,
    seed: u64,
    plan: &Plan,
    ca_pem: &[u8],
    jwt_secret: &str,
    shared: &SharedState,
) -> Client {
    let observer = &plan.devices[index].observer;
    let nodes = config.nodes as usize;
    let servers: Vec<SocketAddr> = (0..nodes)
        .map(|offset| {
            let id = ((index + offset) % nodes) as u64 + 1;
            SocketAddr::new(turmoil::lookup(node_name(id)), PEER_PORT)
        })
        .collect();
    let key = natter_node::auth::TokenKey::new(jwt_secret.as_bytes()).expect("the harness's secret is long enough");
    let token = key.issue(&observer.user, crate::env::SIM_EPOCH_MS / 1000, TOKEN_TTL_SECONDS);
    let mut client_config = ClientConfig::new(servers, ca_pem.to_vec(), token, observer.device.clone());
    client_config.request_timeout = config.request_timeout;
    client_config.endpoint = Some(client_endpoints(seed.wrapping_add(index as u64).wrapping_mul(0x51_7cc1_b727_220a)));
    loop {
        // `starting_at`, not `fresh`: the OS clock must not reach a simulation.
        let store = MemoryCursors::with_state(CursorState::starting_at(1));
        match Client::connect(client_config.clone(), Box::new(store)).await {
            Ok(client) => return client,
            Err(error) => {
                shared.trace(format!("{observer} connect failed: {error}"));
                tokio::time::sleep(SETUP_RETRY).await;
            }
        }
    }
}

fn record_event(shared: &SharedState, observer: &Observer, known: &Mutex<BTreeSet<ConversationId>>, event: Event) {
    let at = now_ms();
    let mut state = shared.lock();
    match event {
        Event::Message(message) => {
            state.trace.push(format!("{at} {observer} got {} #{}", message.conversation, message.seq));
            state.history.committed_at.entry(message.conversation).or_default().push((at, message.seq));
            state.history.deliveries.entry(observer.clone()).or_default().push(message);
        }
        Event::Receipt { conversation, user, delivered, read } => {
            state.trace.push(format!("{at} {observer} receipt {conversation} {user} {delivered}/{read}"));
            state.history.receipts.entry(observer.clone()).or_default().push((conversation, user, delivered, read));
        }
        Event::Conversation(info) => {
            state.trace.push(format!("{at} {observer} joined {}", info.id));
            known.lock().expect("known").insert(info.id);
        }
        Event::Connected { node } => state.trace.push(format!("{at} {observer} session to {node}")),
        Event::Disconnected { reason } => state.trace.push(format!("{at} {observer} disconnected: {reason}")),
        other => state.trace.push(format!("{at} {observer} {other:?}")),
    }
}

async fn wait_until(shared: &SharedState, done: impl Fn(&Shared) -> bool) {
    while !done(&shared.lock()) {
        tokio::time::sleep(BARRIER_POLL).await;
    }
}

/// The workload proper: at random intervals (mean `1 / sends_per_device_per_second`) a send,
/// a history read or a reconnect, until the harness says stop or the run's sends are used up.
/// Sends run concurrently, each in its own task, so a slow one does not hold the rate back.
async fn operate(
    index: usize,
    seed: u64,
    config: &RunConfig,
    client: &Arc<Client>,
    observer: &Observer,
    conversations: &[ConversationId],
    shared: &SharedState,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(index as u64) ^ 0x776f_726b);
    let mean_micros = (1_000_000.0 / config.sends_per_device_per_second.max(0.001)) as u64;
    let mut sent = 0u64;
    loop {
        let wait = Duration::from_micros(rng.random_range(mean_micros / 2..=mean_micros * 3 / 2));
        // In slices, so a slow device notices the end of the workload in time.
        let wake_at = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < wake_at {
            if shared.lock().stop_sending {
                return;
            }
            tokio::time::sleep_until(wake_at.min(tokio::time::Instant::now() + STOP_POLL)).await;
        }
        if shared.lock().stop_sending {
            return;
        }
        let conversation = conversations[rng.random_range(0..conversations.len())];
        let roll: f64 = rng.random();
        if roll < config.reconnect_share {
            shared.lock().reconnects += 1;
            shared.trace(format!("{observer} reconnects"));
            let _ = client.reconnect().await;
        } else if roll < config.reconnect_share + config.history_read_share {
            shared.lock().reads += 1;
            let (client, shared, observer) = (client.clone(), shared.clone(), observer.clone());
            tokio::spawn(async move {
                let invoked_ms = now_ms();
                let result = client.history(conversation, None, HISTORY_PAGE_MESSAGES).await;
                let at = now_ms();
                let mut state = shared.lock();
                match result {
                    Ok(messages) => {
                        let seqs = messages.first().map(|m| m.seq)..=messages.last().map(|m| m.seq);
                        state.trace.push(format!("{at} {observer} read {conversation} {seqs:?}"));
                        let highest_seq = messages.iter().map(|m| m.seq).max();
                        state.history.read_views.push(ReadView { observer, conversation, invoked_ms, highest_seq });
                        state.history.reads.extend(messages);
                    }
                    Err(error) => state.trace.push(format!("{at} {observer} read {conversation} failed: {error}")),
                }
            });
        } else {
            let number = {
                let mut state = shared.lock();
                if state.sends_invoked >= config.sends_max {
                    return;
                }
                state.sends_invoked += 1;
                state.sends_invoked
            };
            sent += 1;
            let body = format!("{observer} #{sent}");
            let record = SendRecord {
                observer: observer.clone(),
                conversation,
                client_seq: 0,
                body: body.clone(),
                outcome: SendOutcome::Unknown,
            };
            {
                let at = now_ms();
                let mut state = shared.lock();
                state.trace.push(format!("{at} {observer} send {conversation} {body:?}"));
                state.pending.insert(number, record.clone());
            }
            let (client, shared) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                let result = client.send(conversation, body).await;
                let (client_seq, outcome) = match result {
                    Ok(ok) => (ok.client_seq, SendOutcome::Acknowledged(ok.seq)),
                    Err(ClientError::Server { code, .. }) => (0, SendOutcome::Refused(code.to_string())),
                    // Timeouts and client-side failures say nothing about the commit: unknown,
                    // never a failure.
                    Err(_) => (0, SendOutcome::Unknown),
                };
                let at = now_ms();
                let mut state = shared.lock();
                state.pending.remove(&number);
                if let SendOutcome::Acknowledged(seq) = outcome {
                    state.history.committed_at.entry(record.conversation).or_default().push((at, seq));
                }
                state.trace.push(format!("{at} {} sent {:?} -> {outcome:?}", record.observer, record.body));
                state.history.sends.push(SendRecord { client_seq, outcome, ..record });
            });
        }
    }
}
