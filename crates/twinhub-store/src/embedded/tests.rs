use super::*;
use crate::codec::{FORMAT_V1, PARALLEL_DECODE_MIN};
use proptest::prelude::*;
use std::collections::BTreeMap;
use twinhub_core::json::DeviceDraft;
use twinhub_core::record::Presence;
use twinhub_core::session::SessionRecord;
use twinhub_core::{DeviceId, Timestamp, Twin, TwinPatch, TwinRules};

fn record(id: &str, tag: i64) -> DeviceRecord {
    let now = Timestamp(1_700_000_000_000 + tag);
    let rules = TwinRules::default();
    let draft = DeviceDraft::from_json(&serde_json::json!({ "deviceId": id }), "deviceId").expect("valid device");
    let patch = TwinPatch::from_json(
        &serde_json::json!({"tags": {"n": tag, "site": {"name": format!("site-{tag}")}},
                             "properties": {"desired": {"interval": tag}}}),
        &rules,
    )
    .expect("valid patch");
    let twin = Twin::new(now).patched(&patch, now, &rules).expect("within the rules").0;
    DeviceRecord::new(
        draft.into_identity(None, now, |_| None).expect("no edge scopes"),
        twin,
        Presence::default(),
    )
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn load_sorted(store: &EmbeddedStore) -> Vec<DeviceRecord> {
    let mut records = block_on(store.load_all()).expect("load");
    records.sort_by(|a, b| a.identity.device_id.cmp(&b.identity.device_id));
    records
}

fn upserts(records: &[DeviceRecord]) -> Vec<StoreWrite> {
    records
        .iter()
        .cloned()
        .map(|record| StoreWrite::Upsert(Arc::new(record)))
        .collect()
}

fn id(text: &str) -> DeviceId {
    DeviceId::new(text).expect("valid id")
}

#[test]
fn committed_records_are_there_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = [record("a", 1), record("b", 2), record("c", 3)];
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let batch = upserts(&written);
        block_on(store.commit(batch)).expect("commit");
        block_on(store.commit(vec![StoreWrite::Delete(id("b"))])).expect("commit");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(load_sorted(&store), vec![written[0].clone(), written[2].clone()]);
}

#[test]
fn a_second_process_cannot_open_a_store_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = EmbeddedStore::open(dir.path()).expect("open");
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Open { path, .. }) => assert_eq!(path, dir.path().display().to_string()),
        other => panic!("expected an Open error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_corrupt_record_is_an_error_naming_its_key_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    block_on(store.commit(vec![StoreWrite::Upsert(Arc::new(record("good", 1)))])).expect("commit");
    let cases: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("future-format", &[9, 1, 2, 3]),
        ("truncated", &[FORMAT_V1, 0x05, b'a']),
        (
            "garbage",
            &[FORMAT_V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for (key, value) in cases {
        store.inner.devices.insert(key, value).expect("raw insert");
        match block_on(store.load_all()) {
            Err(StoreError::Corrupt { key: reported, .. }) => assert_eq!(reported, key),
            other => panic!("{key}: expected Corrupt, got {:?}", other.map(|r| r.len())),
        }
        store.inner.devices.remove(key).expect("raw remove");
    }
    // A record stored under another device's key is corrupt too.
    let mut moved = encode(&record("elsewhere", 1)).expect("encode");
    store
        .inner
        .devices
        .insert("misplaced", std::mem::take(&mut moved))
        .expect("raw insert");
    assert!(matches!(block_on(store.load_all()), Err(StoreError::Corrupt { key, .. }) if key == "misplaced"));
}

fn session(client_id: &str, filters: &[&str]) -> SessionRecord {
    SessionRecord {
        client_id: client_id.to_owned(),
        subscriptions: filters
            .iter()
            .map(|filter| twinhub_core::session::StoredSubscription {
                filter: (*filter).to_owned(),
                qos: 1,
            })
            .collect(),
    }
}

#[test]
fn sessions_are_kept_apart_from_devices_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        block_on(store.commit(vec![
            StoreWrite::Upsert(Arc::new(record("d1", 1))),
            StoreWrite::UpsertSession(session("d1", &["$iothub/twin/res/#"])),
            StoreWrite::UpsertSession(session("d2", &["$iothub/methods/POST/#"])),
        ]))
        .expect("commit");
        block_on(store.commit(vec![
            StoreWrite::UpsertSession(session(
                "d1",
                &["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"],
            )),
            StoreWrite::DeleteSession("d2".into()),
        ]))
        .expect("commit");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(load_sorted(&store).len(), 1);
    let sessions = block_on(store.load_sessions()).expect("load sessions");
    assert_eq!(
        sessions,
        vec![session(
            "d1",
            &["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"]
        )]
    );
    // A corrupt or misplaced session is an error naming it, not a panic.
    store
        .inner
        .sessions
        .insert("d3", [FORMAT_V1, 0xff])
        .expect("raw insert");
    assert!(matches!(block_on(store.load_sessions()), Err(StoreError::Corrupt { key, .. }) if key == "session d3"));
    store.inner.sessions.remove("d3").expect("raw remove");
    let moved = crate::codec::encode_session(&session("d4", &[])).expect("encode");
    store.inner.sessions.insert("d5", moved).expect("raw insert");
    assert!(matches!(block_on(store.load_sessions()), Err(StoreError::Corrupt { key, .. }) if key == "session d5"));
}

#[test]
fn many_records_decode_in_parallel_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let count = PARALLEL_DECODE_MIN * 2 + 7;
    // Keys and generation ids are random: keep what was written to compare with.
    let written: Vec<DeviceRecord> = (0..count)
        .map(|n| record(&format!("device-{n:05}"), n as i64))
        .collect();
    let batch = upserts(&written);
    block_on(store.commit(batch)).expect("commit");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(load_sorted(&store), written);
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(u8, i64),
    Delete(u8),
    /// Ends the current batch.
    Commit,
    /// Closes and reopens the store, then checks it against the model.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, -1000i64..1000).prop_map(|(n, v)| Op::Upsert(n, v)),
        2 => (0u8..12).prop_map(Op::Delete),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The store holds exactly what a map holds after the same committed batches, across reopens.
    #[test]
    fn the_store_matches_a_model_across_reopens(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = EmbeddedStore::open(dir.path()).expect("open");
        let mut model: BTreeMap<String, DeviceRecord> = BTreeMap::new();
        let mut pending: Vec<StoreWrite> = Vec::new();
        let mut pending_model = model.clone();
        for op in ops.into_iter().chain([Op::Commit, Op::Reopen]) {
            match op {
                Op::Upsert(n, v) => {
                    let r = record(&format!("d{n}"), v);
                    pending_model.insert(format!("d{n}"), r.clone());
                    pending.push(StoreWrite::Upsert(Arc::new(r)));
                }
                Op::Delete(n) => {
                    pending_model.remove(&format!("d{n}"));
                    pending.push(StoreWrite::Delete(id(&format!("d{n}"))));
                }
                Op::Commit => {
                    block_on(store.commit(std::mem::take(&mut pending))).expect("commit");
                    model = pending_model.clone();
                }
                Op::Reopen => {
                    // Uncommitted writes are simply never sent.
                    pending.clear();
                    pending_model = model.clone();
                    drop(store);
                    store = EmbeddedStore::open(dir.path()).expect("reopen");
                    let expected: Vec<DeviceRecord> = model.values().cloned().collect();
                    prop_assert_eq!(load_sorted(&store), expected);
                }
            }
        }
    }
}

#[test]
fn cloud_to_device_messages_and_feedback_survive_a_reopen() {
    use twinhub_core::c2d::{Ack, DeviceQueue, Feedback, FeedbackRecord, FeedbackStatus, OutgoingMessage};
    let dir = tempfile::tempdir().expect("temp dir");
    let now = Timestamp(1_700_000_000_000_000_000);
    // "d1" is a prefix of "d10": their keys must not mix.
    let (d1, d10) = (DeviceId::new("d1").unwrap(), DeviceId::new("d10").unwrap());
    let mut queue = DeviceQueue::default();
    for id in ["a", "b"] {
        let message = OutgoingMessage {
            message_id: Some(id.into()),
            ack: Ack::Full,
            body: id.as_bytes().to_vec(),
            properties: vec![("k".into(), "v".into())],
            ..OutgoingMessage::default()
        };
        queue.enqueue(message, now).expect("room");
    }
    let record = FeedbackRecord {
        device_id: "d1".into(),
        device_generation_id: "1".into(),
        feedback: Feedback {
            original_message_id: Some("x".into()),
            status: FeedbackStatus::Rejected,
            enqueued_time: now,
        },
    };
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let mut writes: Vec<StoreWrite> = queue
            .messages()
            .iter()
            .map(|message| StoreWrite::UpsertCloudToDevice {
                device_id: d1.clone(),
                message: Box::new(message.clone()),
            })
            .collect();
        writes.push(StoreWrite::UpsertCloudToDevice {
            device_id: d10.clone(),
            message: Box::new(queue.messages()[0].clone()),
        });
        writes.push(StoreWrite::UpsertFeedback {
            sequence_number: 7,
            record: record.clone(),
        });
        writes.push(StoreWrite::UpsertFeedback {
            sequence_number: 8,
            record: record.clone(),
        });
        block_on(store.commit(writes)).expect("commit");
        block_on(store.commit(vec![
            StoreWrite::DeleteCloudToDevice {
                device_id: d1.clone(),
                sequence_number: 0,
            },
            StoreWrite::DeleteFeedback(7),
        ]))
        .expect("commit");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let mut messages = block_on(store.load_cloud_to_device()).expect("load");
    messages.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(messages.len(), 2);
    assert_eq!((&messages[0].0, &messages[0].1), (&d1, &queue.messages()[1]));
    assert_eq!((&messages[1].0, &messages[1].1), (&d10, &queue.messages()[0]));
    assert_eq!(block_on(store.load_feedback()).expect("load"), vec![(8, record)]);
}
