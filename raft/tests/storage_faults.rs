//! The storage seam's fault hooks: an injected I/O error fails a write without writing
//! anything, and an injected fsync delay holds the write's completion back by that long (in
//! tokio's clock, which the simulator drives).

mod support;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natter_raft::store::{Durability, Store, StoreConfig};
use natter_raft::{StorageFaults, WriterMode};

#[derive(Debug, Default)]
struct Faults {
    failing: AtomicBool,
    slow: AtomicBool,
}

const DELAY: Duration = Duration::from_millis(750);

impl StorageFaults for Faults {
    fn before_write(&self) -> Option<io::Error> {
        self.failing.load(Ordering::Relaxed).then(|| io::Error::other("injected I/O error"))
    }

    fn fsync_delay(&self) -> Duration {
        if self.slow.load(Ordering::Relaxed) {
            DELAY
        } else {
            Duration::ZERO
        }
    }
}

fn open(faults: Arc<Faults>) -> (tempfile::TempDir, Arc<Store>) {
    let dir = support::temp_dir();
    let config = StoreConfig {
        writer: WriterMode::Inline,
        durability: Durability::NoSync,
        faults: Some(faults),
        ..StoreConfig::new(dir.path())
    };
    (dir, Store::open(&config).expect("open store"))
}

async fn put(store: &Store, key: &'static [u8]) -> io::Result<()> {
    store
        .write(move |tables, txn| {
            tables.meta.put(txn, key, b"v")?;
            Ok(())
        })
        .await
}

fn has(store: &Store, key: &'static [u8]) -> bool {
    store.read(|tables, txn| Ok(tables.meta.get(txn, key)?.is_some())).expect("read")
}

#[tokio::test(start_paused = true)]
async fn an_injected_error_fails_the_write_and_writes_nothing() {
    let faults = Arc::new(Faults::default());
    let (_dir, store) = open(faults.clone());
    put(&store, b"before").await.expect("a healthy disk writes");
    faults.failing.store(true, Ordering::Relaxed);
    let error = put(&store, b"during").await.expect_err("the injected error fails the write");
    assert!(error.to_string().contains("injected"), "{error}");
    assert!(!has(&store, b"during"), "a failed write leaves nothing behind");
    faults.failing.store(false, Ordering::Relaxed);
    put(&store, b"after").await.expect("the disk recovers");
    assert!(has(&store, b"before") && has(&store, b"after"));
}

#[tokio::test(start_paused = true)]
async fn an_injected_fsync_delay_holds_the_write_back() {
    let faults = Arc::new(Faults::default());
    let (_dir, store) = open(faults.clone());
    let started = tokio::time::Instant::now();
    put(&store, b"fast").await.expect("write");
    assert!(started.elapsed() < DELAY, "no delay without the fault");
    faults.slow.store(true, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    put(&store, b"slow").await.expect("write");
    assert!(started.elapsed() >= DELAY, "took {:?}", started.elapsed());
    assert!(has(&store, b"slow"));
}
