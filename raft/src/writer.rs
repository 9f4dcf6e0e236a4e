//! The single writer of a node's LMDB environment.
//!
//! LMDB allows one write transaction at a time. Every write of every shard (log appends,
//! votes, truncation, purges, state machine application, snapshot installation) is a
//! [`WriteOp`] handed to the writer:
//!
//! - [`WriterMode::GroupCommit`] (production): a dedicated thread drains whatever ops are
//!   queued, runs them all in one transaction and commits once, so one fsync covers many shards'
//!   writes; then it completes every op of the batch.
//! - [`WriterMode::Inline`] (simulation): the same op code runs in its own transaction on the
//!   calling task, with no thread that would escape the simulator.
//!
//! If a batch fails, its ops are retried one transaction each so that one failing op cannot
//! fail its neighbours. An op's `write` may therefore run more than once; it must start from
//! scratch each time (nothing it wrote before survives an aborted transaction).

use std::io;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heed::{Env, RwTxn};
use tokio::sync::mpsc;

use crate::tables::Tables;

/// Most ops the group-commit writer puts in one transaction.
pub const WRITER_BATCH_OPS_MAX: usize = 1024;
/// Most ops waiting for the group-commit writer; submitters wait for room (back-pressure).
pub const WRITER_QUEUE_OPS_MAX: usize = 4096;
/// Longest the group-commit writer waits for more ops before committing a batch.
pub const WRITER_LINGER_MAX: Duration = Duration::from_micros(200);

/// How a store runs its write transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterMode {
    /// A writer thread batches concurrent writes into one transaction and one fsync.
    GroupCommit,
    /// Each write runs in its own transaction on the caller's task (the simulator's mode).
    Inline,
}

/// One unit of work for the writer.
pub trait WriteOp: Send + 'static {
    /// Performs the writes inside `txn`. May run more than once (see the module docs).
    fn write(&mut self, tables: &Tables, txn: &mut RwTxn<'_>) -> heed::Result<()>;
    /// Called exactly once, after the transaction holding the writes committed (`Ok`, and the
    /// data is on disk as far as the environment's durability promises) or failed.
    fn complete(self: Box<Self>, result: io::Result<()>);
}

type BoxedOp = Box<dyn WriteOp>;

pub(crate) enum Writer {
    Inline,
    Thread { sender: Mutex<Option<mpsc::Sender<BoxedOp>>>, handle: Mutex<Option<JoinHandle<()>>> },
}

impl Writer {
    pub(crate) fn start(mode: WriterMode, env: &Env, tables: Tables) -> io::Result<Self> {
        match mode {
            WriterMode::Inline => Ok(Self::Inline),
            WriterMode::GroupCommit => {
                let (sender, mut receiver) = mpsc::channel::<BoxedOp>(WRITER_QUEUE_OPS_MAX);
                let env = env.clone();
                let handle = std::thread::Builder::new()
                    .name("natter-writer".into())
                    .spawn(move || group_commit_loop(&env, &tables, &mut receiver))?;
                Ok(Self::Thread { sender: Mutex::new(Some(sender)), handle: Mutex::new(Some(handle)) })
            }
        }
    }

    pub(crate) async fn submit(&self, env: &Env, tables: &Tables, op: BoxedOp) {
        match self {
            Self::Inline => run_batch(env, tables, &mut vec![op]),
            Self::Thread { sender, .. } => {
                let sender = sender.lock().expect("writer lock").clone();
                let Some(sender) = sender else {
                    op.complete(Err(io::Error::other("store is closed")));
                    return;
                };
                if let Err(mpsc::error::SendError(op)) = sender.send(op).await {
                    op.complete(Err(io::Error::other("store writer stopped")));
                }
            }
        }
    }

    /// Stops the writer thread after it finished every op already queued.
    pub(crate) fn stop(&self) {
        if let Self::Thread { sender, handle } = self {
            sender.lock().expect("writer lock").take();
            if let Some(handle) = handle.lock().expect("writer lock").take() {
                // A panic in the writer thread has already failed its ops; nothing more to do.
                let _ = handle.join();
            }
        }
    }
}

/// Receives ops and commits them in batches until every sender is gone.
///
/// Writers that waited for the previous commit resubmit a moment after it completes, not all at
/// once, so a batch started on the first arrival would hold one op and the rest would wait a
/// whole fsync. The loop therefore lingers (at most [`WRITER_LINGER_MAX`]) until as many ops as
/// the previous batch held have arrived: under steady concurrent load batches stay full, and a
/// lone writer (previous batch of one) never waits.
fn group_commit_loop(env: &Env, tables: &Tables, receiver: &mut mpsc::Receiver<BoxedOp>) {
    let mut batch = Vec::with_capacity(WRITER_BATCH_OPS_MAX);
    let mut expected = 1;
    while let Some(op) = receiver.blocking_recv() {
        batch.push(op);
        let started = Instant::now();
        loop {
            match receiver.try_recv() {
                Ok(op) => {
                    batch.push(op);
                    if batch.len() >= WRITER_BATCH_OPS_MAX {
                        break;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty)
                    if batch.len() < expected && started.elapsed() < WRITER_LINGER_MAX =>
                {
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        expected = batch.len();
        run_batch(env, tables, &mut batch);
    }
}

fn run_batch(env: &Env, tables: &Tables, batch: &mut Vec<BoxedOp>) {
    let run = |ops: &mut [BoxedOp]| -> heed::Result<()> {
        let mut txn = env.write_txn()?;
        for op in ops.iter_mut() {
            op.write(tables, &mut txn)?;
        }
        txn.commit()
    };
    match run(batch) {
        Ok(()) => {
            for op in batch.drain(..) {
                op.complete(Ok(()));
            }
        }
        Err(error) if batch.len() == 1 => {
            let op = batch.pop().expect("one op");
            op.complete(Err(io::Error::other(error)));
        }
        Err(_) => {
            for mut op in batch.drain(..) {
                let result = run(std::slice::from_mut(&mut op)).map_err(io::Error::other);
                op.complete(result);
            }
        }
    }
}
