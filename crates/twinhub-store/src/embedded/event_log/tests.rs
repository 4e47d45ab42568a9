use super::*;
use crate::codec::FORMAT_V1;
use crate::events::EVENT_PARTITIONS_DEFAULT;
use crate::StoreOptions;
use proptest::prelude::*;
use twinhub_core::event::{DeviceEvent, EventOrigin, EventProperties, EventValue};
use twinhub_core::DeviceId;

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// An event enqueued at `time_ms` (milliseconds) with a body of `body_bytes`.
fn event(sequence_number: u64, time_ms: i64, body_bytes: usize) -> StoredEvent {
    StoredEvent {
        sequence_number,
        enqueued_time: Timestamp(time_ms * 1_000_000),
        origin: EventOrigin {
            device_id: DeviceId::new("device-1").expect("valid id"),
            module_id: None,
            generation_id: "638000000000000000".to_owned(),
        },
        event: DeviceEvent {
            body: (0..body_bytes).map(|n| (n % 251) as u8).collect(),
            properties: EventProperties {
                message_id: Some(EventValue::String(format!("m-{sequence_number}"))),
                content_type: Some("application/json".to_owned()),
                ..EventProperties::default()
            },
            application_properties: vec![("temperature".to_owned(), EventValue::Double(21.5))],
            annotations: Vec::new(),
        },
    }
}

/// The append that stores `stored` in `partition`, if the partition's next number is its own.
fn append_of(partition: u16, stored: StoredEvent) -> EventAppend {
    EventAppend {
        partition,
        enqueued_time: stored.enqueued_time,
        origin: stored.origin,
        event: stored.event,
    }
}

/// Events `sequence_numbers` of `partition`, enqueued at their sequence number in milliseconds.
fn appends(partition: u16, sequence_numbers: std::ops::Range<u64>, body_bytes: usize) -> Vec<EventAppend> {
    sequence_numbers
        .map(|sequence_number| append_of(partition, event(sequence_number, sequence_number as i64, body_bytes)))
        .collect()
}

fn sequence_numbers(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|event| event.sequence_number).collect()
}

/// The stored size of `events` appended to an empty partition, as the store counts it.
fn stored_bytes(events: &[StoredEvent]) -> u64 {
    events.iter().fold(0, |offset, event| {
        offset + encode_event(offset, event).expect("encode").len() as u64
    })
}

fn read_all(store: &EmbeddedStore, partition: u16) -> Vec<StoredEvent> {
    block_on(store.read_events(partition, 0, usize::MAX, usize::MAX)).expect("read")
}

#[test]
fn appended_events_are_read_back_in_order_within_their_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    assert_eq!(store.partition_count(), EVENT_PARTITIONS_DEFAULT);
    assert_eq!(
        block_on(store.event_bounds()).expect("bounds"),
        vec![PartitionBounds::default(); usize::from(EVENT_PARTITIONS_DEFAULT)]
    );
    // One batch over two partitions, interleaved as the hub would give them.
    let mut batch = appends(0, 0..3, 100);
    batch.insert(1, appends(2, 0..1, 10).remove(0));
    batch.extend(appends(2, 1..2, 10));
    block_on(store.append_events(batch.clone())).expect("append");
    block_on(store.append_events(appends(0, 3..5, 100))).expect("append");

    let partition_0 = read_all(&store, 0);
    assert_eq!(sequence_numbers(&partition_0), vec![0, 1, 2, 3, 4]);
    assert_eq!(partition_0[3], event(3, 3, 100));
    assert_eq!(read_all(&store, 2), vec![event(0, 0, 10), event(1, 1, 10)]);
    assert!(read_all(&store, 1).is_empty());

    let bounds = block_on(store.event_bounds()).expect("bounds");
    assert_eq!(
        bounds[0],
        PartitionBounds {
            first: 0,
            next: 5,
            retained_bytes: stored_bytes(&partition_0)
        }
    );
    assert_eq!(bounds[2].next, 2);
    assert_eq!(bounds[1], PartitionBounds::default());
    // Reading from past the end, or nothing, gives nothing.
    assert!(block_on(store.read_events(0, 5, 10, 1 << 20)).expect("read").is_empty());
    assert!(block_on(store.read_events(0, 0, 0, 1 << 20)).expect("read").is_empty());
    assert!(matches!(
        block_on(store.read_events(4, 0, 10, 1 << 20)),
        Err(StoreError::NoSuchPartition {
            partition: 4,
            partition_count: 4
        })
    ));
}

#[test]
fn reads_stop_at_max_events_and_max_bytes_but_always_return_one_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    block_on(store.append_events(appends(1, 0..10, 1000))).expect("append");
    let one_event_bytes = stored_bytes(&[event(0, 0, 1000)]) as usize;

    let read = |from, max_events, max_bytes| {
        sequence_numbers(&block_on(store.read_events(1, from, max_events, max_bytes)).expect("read"))
    };
    assert_eq!(read(2, 3, usize::MAX), vec![2, 3, 4]);
    // Three events fit in three events' bytes and a bit; a fourth would pass the limit.
    assert_eq!(read(0, 100, 3 * one_event_bytes + 10), vec![0, 1, 2]);
    // An event larger than the limit still comes, alone, so that a reader moves on.
    assert_eq!(read(7, 100, 1), vec![7]);
    assert_eq!(read(9, 100, 0), vec![9]);
}

#[test]
fn the_store_numbers_each_partition_on_in_batch_order_and_refuses_a_batch_naming_no_partition_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    assert_eq!(
        block_on(store.append_events(appends(0, 0..2, 10))).expect("append"),
        vec![0, 1]
    );
    // Interleaved partitions: each goes on from its own next number.
    let mut batch = appends(1, 0..2, 10);
    batch.insert(1, appends(0, 2..3, 10).remove(0));
    batch.extend(appends(0, 3..4, 10));
    assert_eq!(block_on(store.append_events(batch)).expect("append"), vec![0, 2, 1, 3]);
    let before = block_on(store.event_bounds()).expect("bounds");

    let mut nowhere = appends(2, 0..1, 10);
    nowhere.extend(appends(EVENT_PARTITIONS_DEFAULT, 0..1, 10));
    let error = block_on(store.append_events(nowhere)).expect_err("refused");
    assert_eq!(
        error.to_string(),
        StoreError::NoSuchPartition {
            partition: EVENT_PARTITIONS_DEFAULT,
            partition_count: EVENT_PARTITIONS_DEFAULT,
        }
        .to_string()
    );
    assert_eq!(block_on(store.event_bounds()).expect("bounds"), before);
    assert!(read_all(&store, 2).is_empty());
    assert!(store.events.partitions[2].is_empty().expect("is_empty"));
    drop(store);
    // Nothing of a refused batch is there after reopening either.
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(block_on(store.event_bounds()).expect("bounds"), before);
    assert_eq!(sequence_numbers(&read_all(&store, 0)), vec![0, 1, 2, 3]);
    assert_eq!(read_all(&store, 1)[1], event(1, 1, 10));
}

#[test]
fn trims_move_first_and_lower_retained_bytes_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written: Vec<StoredEvent>;
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        block_on(store.append_events(appends(3, 0..20, 50))).expect("append");
        written = read_all(&store, 3);
        block_on(store.trim_events(3, 5)).expect("trim");
        // A trim below `first` changes nothing.
        block_on(store.trim_events(3, 2)).expect("trim");
        let bounds = block_on(store.event_bounds()).expect("bounds")[3];
        assert_eq!((bounds.first, bounds.next), (5, 20));
        assert_eq!(
            bounds.retained_bytes,
            stored_bytes(&written) - stored_bytes(&written[..5])
        );
        // Reading below `first` starts at `first`.
        assert_eq!(
            sequence_numbers(&block_on(store.read_events(3, 0, 2, usize::MAX)).expect("read")),
            vec![5, 6]
        );
        assert!(matches!(
            block_on(store.trim_events(9, 1)),
            Err(StoreError::NoSuchPartition { partition: 9, .. })
        ));
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(read_all(&store, 3), written[5..]);
    // Trimming past `next` empties the partition; sequence numbers go on from `next`.
    block_on(store.trim_events(3, 1000)).expect("trim");
    assert_eq!(
        block_on(store.event_bounds()).expect("bounds")[3],
        PartitionBounds {
            first: 20,
            next: 20,
            retained_bytes: 0
        }
    );
    assert!(read_all(&store, 3).is_empty());
    assert_eq!(
        block_on(store.first_at_or_after(3, Timestamp(0))).expect("search"),
        None
    );
    let more = appends(3, 20..22, 50);
    block_on(store.append_events(more.clone())).expect("append");
    assert_eq!(sequence_numbers(&read_all(&store, 3)), vec![20, 21]);
    // The partition's byte offsets go on too: the new events are counted at the offsets they were stored at.
    let offset = stored_bytes(&written);
    let first_bytes = encode_event(offset, &more[0].clone().stored(20)).expect("encode").len() as u64;
    let second_bytes = encode_event(offset + first_bytes, &more[1].clone().stored(21))
        .expect("encode")
        .len() as u64;
    assert_eq!(
        block_on(store.event_bounds()).expect("bounds")[3].retained_bytes,
        first_bytes + second_bytes
    );
}

#[test]
fn first_at_or_after_finds_the_first_event_at_or_after_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    // Times in ms: 10, 10, 10, 20, 20, 30, ... (several events per millisecond, as under load).
    let batch: Vec<EventAppend> = (0..30)
        .map(|sequence_number| append_of(1, event(sequence_number, 10 * (1 + sequence_number as i64 / 3), 8)))
        .collect();
    block_on(store.append_events(batch)).expect("append");
    let search = |time_ms: i64| block_on(store.first_at_or_after(1, Timestamp(time_ms * 1_000_000))).expect("search");
    assert_eq!(search(0), Some(0));
    assert_eq!(search(10), Some(0));
    assert_eq!(search(11), Some(3));
    assert_eq!(search(20), Some(3));
    assert_eq!(search(55), Some(15));
    assert_eq!(search(100), Some(27));
    assert_eq!(search(101), None);
    assert_eq!(
        block_on(store.first_at_or_after(0, Timestamp(0))).expect("search"),
        None
    );
    block_on(store.trim_events(1, 7)).expect("trim");
    assert_eq!(search(0), Some(7));
    assert_eq!(search(30), Some(7));
    assert_eq!(search(31), Some(9));
}

#[test]
fn the_partition_count_is_chosen_at_creation_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open_with(dir.path(), StoreOptions { event_partitions: 8 }).expect("open");
        assert_eq!(store.partition_count(), 8);
        block_on(store.append_events(appends(7, 0..3, 20))).expect("append");
    }
    // Reopened with another count asked: the stored one wins.
    let store = EmbeddedStore::open_with(dir.path(), StoreOptions { event_partitions: 2 }).expect("reopen");
    assert_eq!(store.partition_count(), 8);
    assert_eq!(block_on(store.event_bounds()).expect("bounds").len(), 8);
    assert_eq!(sequence_numbers(&read_all(&store, 7)), vec![0, 1, 2]);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(store.partition_count(), 8);

    for asked in [0, 1, EVENT_PARTITIONS_MAX + 1] {
        let fresh = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            EmbeddedStore::open_with(fresh.path(), StoreOptions { event_partitions: asked }),
            Err(StoreError::EventPartitionCount { asked: reported }) if reported == asked
        ));
    }
    let fresh = tempfile::tempdir().expect("tempdir");
    let most = EmbeddedStore::open_with(
        fresh.path(),
        StoreOptions {
            event_partitions: EVENT_PARTITIONS_MAX,
        },
    )
    .expect("open");
    assert_eq!(most.partition_count(), EVENT_PARTITIONS_MAX);
}

#[test]
fn corrupt_events_and_counters_are_errors_naming_their_key_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    block_on(store.append_events(appends(2, 0..4, 30))).expect("append");
    let partition = &store.events.partitions[2];
    let good = partition.get(event_key(1)).expect("get").expect("stored");
    let misplaced = partition.get(event_key(3)).expect("get").expect("stored");
    let cases: [(&str, &[u8]); 5] = [
        ("empty", b""),
        ("future-format", &[9, 1, 2, 3]),
        ("truncated", &[FORMAT_V1, 0x05, b'a']),
        (
            "garbage",
            &[FORMAT_V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        ("another event", &misplaced),
    ];
    for (case, value) in cases {
        partition.insert(event_key(1), value).expect("raw insert");
        match block_on(store.read_events(2, 0, 10, usize::MAX)) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "event 2/1", "{case}"),
            other => panic!("{case}: expected Corrupt, got {:?}", other.map(|events| events.len())),
        }
        assert!(
            matches!(
                block_on(store.first_at_or_after(2, Timestamp(1_000_000))),
                Err(StoreError::Corrupt { key, .. }) if key == "event 2/1"
            ),
            "{case}"
        );
    }
    // A trim reads the offset of the event it trims to, and only that.
    partition.insert(event_key(1), b"".as_slice()).expect("raw insert");
    assert!(matches!(
        block_on(store.trim_events(2, 1)),
        Err(StoreError::Corrupt { key, .. }) if key == "event 2/1"
    ));
    // A missing event is corrupt too.
    partition.remove(event_key(1)).expect("raw remove");
    assert!(matches!(
        block_on(store.read_events(2, 0, 10, usize::MAX)),
        Err(StoreError::Corrupt { key, .. }) if key == "event 2/1"
    ));
    partition.insert(event_key(1), good).expect("raw insert");
    assert_eq!(sequence_numbers(&read_all(&store, 2)), vec![0, 1, 2, 3]);

    // Corrupt counters or partition count fail the open, naming the meta key.
    drop(store);
    let open_corrupted = |key: &str, value: &[u8]| {
        let original = {
            let store = EmbeddedStore::open(dir.path()).expect("reopen");
            let original = store.events.meta.get(key).expect("get").expect("stored");
            store.events.meta.insert(key, value).expect("raw insert");
            store.inner.db.persist(PersistMode::Buffer).expect("persist");
            original
        };
        let outcome = EmbeddedStore::open(dir.path()).map(|_| ());
        // The store does not open: put the original back through fjall itself for the next case.
        let db = Database::builder(dir.path()).open().expect("raw open");
        let meta = db
            .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)
            .expect("meta");
        meta.insert(key, original).expect("restore");
        db.persist(PersistMode::Buffer).expect("persist");
        outcome
    };
    let counters = PartitionCounters {
        first: 5,
        next: 4,
        ..PartitionCounters::default()
    };
    for (key, value) in [
        ("event_partition/0", vec![FORMAT_V1, 0xff]),
        ("event_partition/1", encode_counters(&counters).expect("encode")),
        (PARTITION_COUNT_KEY, vec![FORMAT_V1, 0]),
        (PARTITION_COUNT_KEY, encode_partition_count(64)),
    ] {
        match open_corrupted(key, &value) {
            Err(StoreError::Corrupt { key: reported, .. }) => assert_eq!(reported, key),
            other => panic!("{key}: expected Corrupt, got {other:?}"),
        }
    }
    assert!(EmbeddedStore::open(dir.path()).is_ok());
}

#[test]
fn trimming_a_large_range_drops_whole_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let partition = &store.events.partitions[0];
    // Several tables: flush after each batch.
    for batch in 0..8u64 {
        block_on(store.append_events(appends(0, batch * 500..(batch + 1) * 500, 200))).expect("append");
        partition.rotate_memtable_and_wait().expect("flush");
    }
    let tables_before = partition.table_count();
    assert!(tables_before >= 8, "{tables_before} tables");
    block_on(store.trim_events(0, 3_750)).expect("trim");
    // Seven tables lie wholly below 3,750 (0..3,500); the one holding 3,500..4,000 stays.
    assert!(
        partition.table_count() <= tables_before - 7,
        "{} tables",
        partition.table_count()
    );
    assert_eq!(
        sequence_numbers(&block_on(store.read_events(0, 0, 3, usize::MAX)).expect("read")),
        vec![3_750, 3_751, 3_752]
    );
    assert_eq!(block_on(store.event_bounds()).expect("bounds")[0].len(), 250);
}

/// One step of the model-based test.
#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` events with bodies of `body_bytes` to a partition, in one batch with the
    /// following appends until a `Commit`.
    Append {
        partition: u16,
        count: u8,
        body_bytes: u16,
    },
    /// Ends the current batch.
    Commit,
    /// Trims a partition to `first + advance` of the model (past `next` sometimes).
    Trim {
        partition: u16,
        advance: u8,
    },
    Read {
        partition: u16,
        from: u8,
        max_events: u8,
        max_bytes: u16,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let partition = 0u16..3;
    prop_oneof![
        6 => (partition.clone(), 1u8..6, 0u16..600)
            .prop_map(|(partition, count, body_bytes)| Op::Append { partition, count, body_bytes }),
        3 => Just(Op::Commit),
        2 => (partition.clone(), 0u8..12).prop_map(|(partition, advance)| Op::Trim { partition, advance }),
        3 => (partition, 0u8..40, 0u8..10, 0u16..3000)
            .prop_map(|(partition, from, max_events, max_bytes)| Op::Read { partition, from, max_events, max_bytes }),
        1 => Just(Op::Reopen),
    ]
}

/// A partition as the model keeps it: every event ever appended (sizes included) and the first retained.
#[derive(Clone, Default)]
struct ModelPartition {
    events: Vec<(StoredEvent, u64)>,
    first: u64,
}

impl ModelPartition {
    fn retained(&self) -> &[(StoredEvent, u64)] {
        &self.events[self.first as usize..]
    }

    fn bounds(&self) -> PartitionBounds {
        PartitionBounds {
            first: self.first,
            next: self.events.len() as u64,
            retained_bytes: self.retained().iter().map(|(_, bytes)| bytes).sum(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The event log holds exactly what a list per partition holds after the same appends and trims,
    /// across reopens, and reads return what the list says they should.
    #[test]
    fn the_event_log_matches_a_model_across_reopens(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions { event_partitions: 3 };
        let mut store = EmbeddedStore::open_with(dir.path(), options).expect("open");
        let mut model = vec![ModelPartition::default(); 3];
        let mut pending: Vec<EventAppend> = Vec::new();
        let mut pending_numbers: Vec<u64> = Vec::new();
        let mut pending_model = model.clone();
        let mut clock_ms = 0i64;
        for op in ops.into_iter().chain([Op::Commit, Op::Reopen]) {
            match op {
                Op::Append { partition, count, body_bytes } => {
                    let target = &mut pending_model[usize::from(partition)];
                    for _ in 0..count {
                        clock_ms += 1;
                        let stored = event(target.events.len() as u64, clock_ms, usize::from(body_bytes));
                        let offset: u64 = target.events.iter().map(|(_, bytes)| bytes).sum();
                        let bytes = encode_event(offset, &stored).expect("encode").len() as u64;
                        pending_numbers.push(stored.sequence_number);
                        target.events.push((stored.clone(), bytes));
                        pending.push(append_of(partition, stored));
                    }
                }
                Op::Commit => {
                    let batch = std::mem::take(&mut pending);
                    let numbered = block_on(store.append_events(batch)).expect("append");
                    prop_assert_eq!(numbered.len(), pending_numbers.len());
                    prop_assert_eq!(numbered, std::mem::take(&mut pending_numbers));
                    model = pending_model.clone();
                }
                Op::Trim { partition, advance } => {
                    let target = &mut model[usize::from(partition)];
                    let before = target.first + u64::from(advance);
                    block_on(store.trim_events(partition, before)).expect("trim");
                    target.first = before.min(target.events.len() as u64);
                    pending_model[usize::from(partition)].first = target.first;
                }
                Op::Read { partition, from, max_events, max_bytes } => {
                    let target = &model[usize::from(partition)];
                    let read = block_on(store.read_events(
                        partition, u64::from(from), usize::from(max_events), usize::from(max_bytes),
                    ))
                    .expect("read");
                    let mut expected = Vec::new();
                    let mut bytes = 0;
                    for (stored, size) in target.retained().iter().filter(|(e, _)| e.sequence_number >= u64::from(from)) {
                        if expected.len() == usize::from(max_events)
                            || (!expected.is_empty() && bytes + size > u64::from(max_bytes)) {
                            break;
                        }
                        bytes += size;
                        expected.push(stored.clone());
                    }
                    prop_assert_eq!(read, expected);
                }
                Op::Reopen => {
                    pending.clear();
                    pending_numbers.clear();
                    pending_model = model.clone();
                    drop(store);
                    store = EmbeddedStore::open_with(dir.path(), options).expect("reopen");
                    let bounds = block_on(store.event_bounds()).expect("bounds");
                    let expected: Vec<PartitionBounds> = model.iter().map(ModelPartition::bounds).collect();
                    prop_assert_eq!(bounds, expected);
                    for (partition, target) in (0u16..).zip(&model) {
                        let retained: Vec<StoredEvent> = target.retained().iter().map(|(e, _)| e.clone()).collect();
                        prop_assert_eq!(read_all(&store, partition), retained);
                    }
                }
            }
        }
    }
}
