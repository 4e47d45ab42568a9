//! The `EventStore` contract, checked the same way against the embedded store and JetStream: what a
//! device's events become (numbers, order, bounds, reads within limits, searches by time, retention),
//! and that a new instance over the same place sees the same log. `events_contract!` makes a test of each
//! check for each store. JetStream alone: several appenders at once (a cluster's nodes) share one
//! numbering, and each instance hears of the others' appends.
//!
//! JetStream needs a NATS server with JetStream: `TWINHUB_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`). When it is unreachable these tests are skipped with a note on stderr, unless
//! `TWINHUB_REQUIRE_POSTGRES=1` or `TWINHUB_REQUIRE_NATS=1` (CI sets the first, and starts NATS).

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use twinhub_core::event::{DeviceEvent, EventOrigin, EventValue, StoredEvent};
use twinhub_core::{DeviceId, Timestamp};
use twinhub_store::{
    EmbeddedStore, EventAppend, EventStore, JetStreamEvents, JetStreamOptions, StoreError, StoreOptions,
};

const PARTITIONS: u16 = 4;

trait Harness: Sized {
    async fn start() -> Option<Self>;
    /// A new instance over the same log; the embedded store allows one at a time (drop the last first).
    async fn open(&self) -> Arc<dyn EventStore>;
}

struct EmbeddedHarness {
    dir: tempfile::TempDir,
}

impl Harness for EmbeddedHarness {
    async fn start() -> Option<Self> {
        Some(EmbeddedHarness {
            dir: tempfile::tempdir().expect("a temporary directory"),
        })
    }

    async fn open(&self) -> Arc<dyn EventStore> {
        let options = StoreOptions {
            event_partitions: PARTITIONS,
        };
        Arc::new(EmbeddedStore::open_with(self.dir.path(), options).expect("the embedded store opens"))
    }
}

struct JetStreamHarness {
    url: String,
    /// The cluster's name: one per test, so that tests never share streams.
    cluster: String,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl JetStreamHarness {
    async fn open_jetstream(&self) -> JetStreamEvents {
        JetStreamEvents::connect(
            &self.url,
            &self.cluster,
            JetStreamOptions {
                partitions: PARTITIONS,
                replicas: 1,
            },
        )
        .await
        .expect("the JetStream event store opens")
    }
}

impl Harness for JetStreamHarness {
    async fn start() -> Option<Self> {
        let url = std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let required = ["TWINHUB_REQUIRE_POSTGRES", "TWINHUB_REQUIRE_NATS"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|value| value == "1"));
        if let Err(error) = async_nats::connect(&url).await {
            assert!(!required, "NATS is required but '{url}' is unreachable: {error}");
            let _ = writeln!(
                std::io::stderr(),
                "skipping the JetStream event store tests: NATS at '{url}' is unreachable ({error})"
            );
            return None;
        }
        let cluster = format!(
            "events-test-{}-{}-{}",
            std::process::id(),
            Timestamp::now().0,
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        Some(JetStreamHarness { url, cluster })
    }

    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.open_jetstream().await)
    }
}

impl Drop for JetStreamHarness {
    fn drop(&mut self) {
        let (url, cluster) = (self.url.clone(), self.cluster.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime
                .block_on(JetStreamEvents::remove(&url, &cluster))
                .map_err(|error| error.to_string())?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

fn origin(device: &str) -> EventOrigin {
    EventOrigin {
        device_id: DeviceId::new(device).expect("valid id"),
        module_id: None,
        generation_id: "638000000000000000".to_owned(),
    }
}

/// Event `n` of `device` with a body of `body_bytes` (its first bytes say `n`).
fn append(partition: u16, device: &str, n: u64, body_bytes: usize) -> EventAppend {
    let mut body = format!("{device}:{n}:").into_bytes();
    body.resize(body_bytes.max(body.len()), b'x');
    EventAppend {
        partition,
        enqueued_time: Timestamp::now(),
        origin: origin(device),
        event: DeviceEvent {
            body,
            application_properties: vec![("n".to_owned(), EventValue::ULong(n))],
            ..DeviceEvent::default()
        },
    }
}

fn label(event: &StoredEvent) -> String {
    let body = String::from_utf8_lossy(&event.event.body);
    let mut parts = body.splitn(3, ':');
    format!("{}:{}", parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// Every retained event of `partition`, read on until a read returns none (a read may return fewer events
/// than it may).
async fn read_all(store: &dyn EventStore, partition: u16) -> Vec<StoredEvent> {
    let mut events: Vec<StoredEvent> = Vec::new();
    loop {
        let from = events.last().map_or(0, |event| event.sequence_number + 1);
        let read = store
            .read_events(partition, from, usize::MAX, usize::MAX)
            .await
            .expect("read");
        if read.is_empty() {
            return events;
        }
        events.extend(read);
    }
}

fn numbers(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|event| event.sequence_number).collect()
}

mod checks {
    use super::*;

    pub async fn events_are_numbered_per_partition_in_batch_order_and_read_back_whole<H: Harness>(harness: &H) {
        {
            let store = harness.open().await;
            assert_eq!(store.partition_count(), PARTITIONS);
            assert!(store.event_bounds().await.expect("bounds").iter().all(|b| b.is_empty()));
            let batch = vec![
                append(0, "a", 0, 10),
                append(2, "b", 0, 10),
                append(0, "a", 1, 10),
                append(0, "a", 2, 10),
            ];
            assert_eq!(
                store.append_events(batch.clone()).await.expect("append"),
                vec![0, 0, 1, 2]
            );
            assert_eq!(
                store
                    .append_events(vec![append(2, "b", 1, 10), append(0, "a", 3, 10)])
                    .await
                    .expect("append"),
                vec![1, 3]
            );
            let partition_0 = read_all(&*store, 0).await;
            assert_eq!(numbers(&partition_0), vec![0, 1, 2, 3]);
            assert_eq!(
                partition_0.iter().map(label).collect::<Vec<_>>(),
                vec!["a:0", "a:1", "a:2", "a:3"]
            );
            // What the device sent comes back as it was, with the origin the hub stamped.
            assert_eq!(partition_0[1].event, batch[2].event);
            assert_eq!(partition_0[1].origin, origin("a"));
            assert!(partition_0
                .windows(2)
                .all(|pair| pair[0].enqueued_time <= pair[1].enqueued_time));
            let bounds = store.event_bounds().await.expect("bounds");
            assert_eq!((bounds[0].first, bounds[0].next), (0, 4));
            assert_eq!((bounds[2].first, bounds[2].next), (0, 2));
            assert!(bounds[0].retained_bytes > 0);
            assert!(bounds[1].is_empty() && bounds[3].is_empty());
        }
        // A new instance over the same log sees the same events and goes on numbering after them.
        let store = harness.open().await;
        assert_eq!(numbers(&read_all(&*store, 2).await), vec![0, 1]);
        assert_eq!(
            store.append_events(vec![append(2, "b", 2, 10)]).await.expect("append"),
            vec![2]
        );
        assert_eq!(
            read_all(&*store, 2).await.iter().map(label).collect::<Vec<_>>(),
            vec!["b:0", "b:1", "b:2"]
        );
    }

    pub async fn reads_keep_to_their_limits_and_always_make_progress<H: Harness>(harness: &H) {
        let store = harness.open().await;
        let batch: Vec<EventAppend> = (0..10).map(|n| append(1, "c", n, 1000)).collect();
        store.append_events(batch).await.expect("append");
        let read = |from, max_events, max_bytes| {
            let store = Arc::clone(&store);
            async move { numbers(&store.read_events(1, from, max_events, max_bytes).await.expect("read")) }
        };
        assert_eq!(read(2, 3, usize::MAX).await, vec![2, 3, 4]);
        // Reading on from where a read stopped, as a receiver does.
        assert_eq!(read(5, 3, usize::MAX).await, vec![5, 6, 7]);
        assert_eq!(read(8, 100, usize::MAX).await, vec![8, 9]);
        // About three events' worth of bytes gives at most three.
        let three = read(0, 100, 3 * 1010).await;
        assert!(!three.is_empty() && three.len() <= 3 && three[0] == 0, "{three:?}");
        // An event larger than the limit still comes, alone.
        assert_eq!(read(7, 100, 1).await, vec![7]);
        assert!(read(10, 100, usize::MAX).await.is_empty(), "past the end");
        assert!(read(0, 0, usize::MAX).await.is_empty(), "no events asked");
        assert!(matches!(
            store.read_events(PARTITIONS, 0, 10, usize::MAX).await,
            Err(StoreError::NoSuchPartition { .. })
        ));
    }

    pub async fn a_batch_naming_no_partition_is_refused_with_nothing_written<H: Harness>(harness: &H) {
        let store = harness.open().await;
        let refused = store
            .append_events(vec![append(0, "d", 0, 10), append(PARTITIONS, "d", 1, 10)])
            .await;
        assert!(matches!(refused, Err(StoreError::NoSuchPartition { partition, .. }) if partition == PARTITIONS));
        assert!(store.event_bounds().await.expect("bounds").iter().all(|b| b.is_empty()));
        assert_eq!(
            store.append_events(vec![append(0, "d", 0, 10)]).await.expect("append"),
            vec![0]
        );
    }

    pub async fn retention_trims_the_oldest_and_numbers_go_on<H: Harness>(harness: &H) {
        {
            let store = harness.open().await;
            store
                .append_events((0..20).map(|n| append(3, "e", n, 50)).collect())
                .await
                .expect("append");
            let full = store.event_bounds().await.expect("bounds")[3];
            store.trim_events(3, 5).await.expect("trim");
            store
                .trim_events(3, 2)
                .await
                .expect("a trim below first changes nothing");
            let bounds = store.event_bounds().await.expect("bounds")[3];
            assert_eq!((bounds.first, bounds.next), (5, 20));
            assert!(bounds.retained_bytes < full.retained_bytes);
            // A read from below `first` starts at `first`.
            assert_eq!(
                numbers(&store.read_events(3, 0, 2, usize::MAX).await.expect("read")),
                vec![5, 6]
            );
        }
        let store = harness.open().await;
        assert_eq!(numbers(&read_all(&*store, 3).await), (5..20).collect::<Vec<_>>());
        // Past `next`: everything goes, and `next` stays.
        store.trim_events(3, 1000).await.expect("trim");
        let bounds = store.event_bounds().await.expect("bounds")[3];
        assert_eq!((bounds.first, bounds.next, bounds.retained_bytes), (20, 20, 0));
        assert!(read_all(&*store, 3).await.is_empty());
        assert_eq!(store.first_at_or_after(3, Timestamp(0)).await.expect("search"), None);
        assert_eq!(
            store.append_events(vec![append(3, "e", 20, 50)]).await.expect("append"),
            vec![20],
            "numbers are never reused"
        );
    }

    pub async fn a_time_finds_the_first_event_enqueued_at_or_after_it<H: Harness>(harness: &H) {
        let store = harness.open().await;
        assert_eq!(store.first_at_or_after(0, Timestamp(0)).await.expect("search"), None);
        store
            .append_events((0..3).map(|n| append(0, "f", n, 10)).collect())
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let between = Timestamp::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The hub's time is what the embedded store keeps; JetStream keeps its own clock's.
        store
            .append_events((3..5).map(|n| append(0, "f", n, 10)).collect())
            .await
            .expect("append");
        let search = |time| {
            let store = Arc::clone(&store);
            async move { store.first_at_or_after(0, time).await.expect("search") }
        };
        assert_eq!(search(Timestamp(0)).await, Some(0));
        assert_eq!(search(between).await, Some(3));
        let events = read_all(&*store, 0).await;
        assert!(events[2].enqueued_time < between && between <= events[3].enqueued_time);
        assert_eq!(search(events[4].enqueued_time).await, Some(4));
        assert_eq!(search(Timestamp(events[4].enqueued_time.0 + 1)).await, None);
    }
}

macro_rules! events_contract {
    (@checks $harness:ty; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(harness) = <$harness as Harness>::start().await {
                    checks::$check(&harness).await;
                }
            }
        )*
    };
    ($($store:ident: $harness:ty),* $(,)?) => {
        $(
            mod $store {
                use super::*;
                events_contract!(@checks $harness;
                    events_are_numbered_per_partition_in_batch_order_and_read_back_whole,
                    reads_keep_to_their_limits_and_always_make_progress,
                    a_batch_naming_no_partition_is_refused_with_nothing_written,
                    retention_trims_the_oldest_and_numbers_go_on,
                    a_time_finds_the_first_event_enqueued_at_or_after_it,
                );
            }
        )*
    };
}

events_contract! {
    embedded: EmbeddedHarness,
    jetstream: JetStreamHarness,
}

/// Three nodes append to the same partitions at once: one numbering without gaps or repeats, each
/// node's events in the order it appended them, and every node hears of every append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_nodes_appending_at_once_share_one_numbering_and_hear_of_each_others_appends() {
    let Some(harness) = JetStreamHarness::start().await else {
        return;
    };
    let nodes = [
        harness.open_jetstream().await,
        harness.open_jetstream().await,
        harness.open_jetstream().await,
    ];
    let mut follow = nodes[0]
        .follow_appends()
        .await
        .expect("follow")
        .expect("JetStream follows");
    const PER_NODE: u64 = 200;
    let appends = nodes.iter().enumerate().map(|(node, store)| async move {
        let device = format!("node{node}");
        let mut numbers = Vec::new();
        for chunk in 0..(PER_NODE / 20) {
            let batch = (chunk * 20..(chunk + 1) * 20)
                .map(|n| append(1, &device, n, 20))
                .collect();
            numbers.extend(store.append_events(batch).await.expect("append"));
        }
        numbers
    });
    let mut given: Vec<u64> = futures_util::future::join_all(appends).await.concat();
    given.sort_unstable();
    assert_eq!(
        given,
        (0..3 * PER_NODE).collect::<Vec<_>>(),
        "one numbering, no gap, no repeat"
    );

    // Any node reads the same partition: every node's events, each node's in its own order.
    for store in &nodes {
        let events = read_all(store, 1).await;
        assert_eq!(numbers(&events), (0..3 * PER_NODE).collect::<Vec<_>>());
        for node in 0..3 {
            let device = format!("node{node}");
            let own: Vec<String> = events.iter().map(label).filter(|l| l.starts_with(&device)).collect();
            let expected: Vec<String> = (0..PER_NODE).map(|n| format!("{device}:{n}")).collect();
            assert_eq!(own, expected);
        }
    }
    // Node 0 heard of the partition's end moving to the last append, whoever made it.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let end = follow.recv().await.expect("following goes on");
            if end.partition == 1 && end.next == 3 * PER_NODE {
                return end;
            }
        }
    })
    .await
    .expect("the last append is heard of");
    assert!(heard.enqueued_time.0 > 0);
}
