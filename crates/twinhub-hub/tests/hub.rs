//! The hub service against in-memory stores: the writer's ordering, versions, etags and failure handling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use twinhub_core::etag::IfMatch;
use twinhub_core::json::DeviceDraft;
use twinhub_core::twin::{ReportedPatch, TwinPatch};
use twinhub_core::{DeviceId, DeviceRecord, TwinRules};
use twinhub_hub::{BulkOperation, Hub, HubConfig, HubError, HubEvent, ImportMode};
use twinhub_store::{Store, StoreError, StoreWrite};

/// Keeps records in a map; can be told to fail commits. Counts commits to show batching.
#[derive(Default)]
struct MemoryStore {
    records: Mutex<BTreeMap<DeviceId, DeviceRecord>>,
    failing: AtomicBool,
    commits: Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn load_all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn commit(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Write("disk on fire".into()));
        }
        self.commits.lock().unwrap().push(batch.len());
        let mut records = self.records.lock().unwrap();
        for write in batch {
            match write {
                StoreWrite::Upsert(record) => {
                    records.insert(record.identity.device_id.clone(), (*record).clone());
                }
                StoreWrite::Delete(id) => {
                    records.remove(&id);
                }
                StoreWrite::UpsertSession(_)
                | StoreWrite::DeleteSession(_)
                | StoreWrite::UpsertConsumerGroup(_)
                | StoreWrite::DeleteConsumerGroup(_)
                | StoreWrite::UpsertCloudToDevice { .. }
                | StoreWrite::DeleteCloudToDevice { .. }
                | StoreWrite::UpsertFeedback { .. }
                | StoreWrite::DeleteFeedback(_)
                | StoreWrite::PutSetting { .. }
                | StoreWrite::UpsertModule(_)
                | StoreWrite::DeleteModule { .. }
                | StoreWrite::UpsertJob(_)
                | StoreWrite::UpsertDeviceJob(_) => {}
            }
        }
        Ok(())
    }
}

fn id(text: &str) -> DeviceId {
    DeviceId::new(text).unwrap()
}

fn draft(text: &str) -> DeviceDraft {
    DeviceDraft::from_json(&serde_json::json!({ "deviceId": text }), "deviceId").unwrap()
}

fn desired(body: serde_json::Value) -> TwinPatch {
    TwinPatch::from_json(
        &serde_json::json!({"properties": {"desired": body}}),
        &TwinRules::default(),
    )
    .unwrap()
}

async fn hub_with(store: Arc<MemoryStore>) -> Arc<Hub> {
    Hub::start(store, HubConfig::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_get_unique_contiguous_versions_and_share_commits() {
    // Scenario: 64 writers patch the same twin at once; every acknowledged patch has its own desired
    // version, the versions have no gaps, and the store saw fewer commits than patches (group commit).
    let store = Arc::new(MemoryStore::default());
    let hub = hub_with(Arc::clone(&store)).await;
    hub.put_device(draft("d1"), IfMatch::Absent).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..64 {
        let hub = Arc::clone(&hub);
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for n in 0..20 {
                let record = hub
                    .patch_twin(
                        id("d1"),
                        desired(serde_json::json!({ format!("w{writer}"): n })),
                        IfMatch::Any,
                    )
                    .await
                    .unwrap();
                versions.push(record.twin.desired.version);
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=1281).collect::<Vec<u64>>());
    let twin = hub.device(&id("d1")).unwrap().twin.clone();
    assert_eq!(twin.desired.version, 1281);
    assert_eq!(twin.desired.members.0.len(), 64);
    let commits = store.commits.lock().unwrap().len();
    assert!(commits < 1281, "{commits} commits for 1281 patches: no batching");
    // What the store holds is what readers see.
    assert_eq!(store.records.lock().unwrap()[&id("d1")].twin, twin);
}

#[tokio::test]
async fn a_failed_commit_is_refused_and_leaves_no_trace() {
    let store = Arc::new(MemoryStore::default());
    let hub = hub_with(Arc::clone(&store)).await;
    hub.put_device(draft("d1"), IfMatch::Absent).await.unwrap();
    let mut events = hub.subscribe();
    store.failing.store(true, Ordering::SeqCst);
    let error = hub
        .patch_twin(id("d1"), desired(serde_json::json!({"a": 1})), IfMatch::Any)
        .await
        .unwrap_err();
    assert!(matches!(error, HubError::Store(_)), "{error}");
    assert_eq!(hub.device(&id("d1")).unwrap().twin.desired.version, 1);
    assert!(
        events.try_recv().is_err(),
        "no event for a write that was not committed"
    );
    store.failing.store(false, Ordering::SeqCst);
    let record = hub
        .patch_twin(id("d1"), desired(serde_json::json!({"a": 1})), IfMatch::Any)
        .await
        .unwrap();
    assert_eq!(record.twin.desired.version, 2);
    match events.recv().await.unwrap() {
        HubEvent::DesiredChanged { device_id, change } => {
            assert_eq!(device_id, id("d1"));
            assert_eq!(change.version, 2);
        }
        other => panic!("unexpected event {other:?}"),
    }
}

#[tokio::test]
async fn if_match_rules_for_devices_and_twins() {
    let hub = hub_with(Arc::default()).await;
    let created = hub.put_device(draft("d1"), IfMatch::Absent).await.unwrap();
    let device_etag = created.identity.etag();
    assert!(matches!(
        hub.put_device(draft("d1"), IfMatch::Absent).await,
        Err(HubError::DeviceAlreadyExists(_))
    ));
    assert!(matches!(
        hub.put_device(draft("d1"), IfMatch::Etag("stale".into())).await,
        Err(HubError::PreconditionFailed { .. })
    ));
    let updated = hub
        .put_device(draft("d1"), IfMatch::Etag(device_etag.clone()))
        .await
        .unwrap();
    assert_ne!(updated.identity.etag(), device_etag);
    assert_eq!(updated.identity.generation_id, created.identity.generation_id);
    assert!(matches!(
        hub.put_device(draft("new"), IfMatch::Etag("x".into())).await,
        Err(HubError::DeviceNotFound(_))
    ));
    hub.put_device(draft("new"), IfMatch::Any).await.unwrap();

    let twin_etag = updated.twin.etag();
    hub.patch_twin(
        id("d1"),
        desired(serde_json::json!({"a": 1})),
        IfMatch::Etag(twin_etag.clone()),
    )
    .await
    .unwrap();
    assert!(matches!(
        hub.patch_twin(id("d1"), desired(serde_json::json!({"a": 2})), IfMatch::Etag(twin_etag))
            .await,
        Err(HubError::PreconditionFailed { .. })
    ));
    assert!(matches!(
        hub.delete_device(id("d1"), IfMatch::Etag("stale".into())).await,
        Err(HubError::PreconditionFailed { .. })
    ));
    hub.delete_device(id("d1"), IfMatch::Absent).await.unwrap();
    assert!(matches!(hub.device(&id("d1")), Err(HubError::DeviceNotFound(_))));
    assert!(matches!(
        hub.delete_device(id("d1"), IfMatch::Any).await,
        Err(HubError::DeviceNotFound(_))
    ));
}

#[tokio::test]
async fn records_survive_a_restart_on_the_same_store() {
    let store = Arc::new(MemoryStore::default());
    let hub = hub_with(Arc::clone(&store)).await;
    hub.put_device(draft("d1"), IfMatch::Absent).await.unwrap();
    let reported = ReportedPatch::from_json(&serde_json::json!({"fw": "1.0"}), &TwinRules::default()).unwrap();
    let before = hub.patch_reported(id("d1"), reported).await.unwrap();
    drop(hub);
    let again = hub_with(store).await;
    assert_eq!(*again.device(&id("d1")).unwrap(), *before);
}

#[tokio::test]
async fn bulk_applies_each_operation_and_reports_failures() {
    let hub = hub_with(Arc::default()).await;
    hub.put_device(draft("exists"), IfMatch::Absent).await.unwrap();
    let operation = |text: &str, mode| BulkOperation {
        mode,
        draft: draft(text),
        etag: None,
        twin_etag: None,
        twin_patch: TwinPatch::default(),
    };
    let outcome = hub
        .bulk(vec![
            operation("a", ImportMode::Create),
            operation("exists", ImportMode::Create),
            operation("missing", ImportMode::Delete),
            operation("b", ImportMode::Create),
        ])
        .await
        .unwrap();
    let failed: Vec<_> = outcome.errors.iter().map(|e| e.device_id.as_str().to_owned()).collect();
    assert_eq!(failed, ["exists", "missing"]);
    assert_eq!(hub.statistics().total, 3);
    let duplicate = hub
        .bulk(vec![
            operation("c", ImportMode::Create),
            operation("c", ImportMode::Create),
        ])
        .await;
    assert!(matches!(duplicate, Err(HubError::DeviceDefinedMultipleTimes(_))));
    assert!(hub.bulk(Vec::new()).await.is_err());
}

fn tags(body: serde_json::Value) -> TwinPatch {
    TwinPatch::from_json(&serde_json::json!({ "tags": body }), &TwinRules::default()).unwrap()
}

/// Every page of a query, as device ids.
async fn query_ids(hub: &Hub, text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = hub.query(text, Some(500), token.as_deref()).await.unwrap();
        ids.extend(
            page.values()
                .iter()
                .map(|twin| twin["deviceId"].as_str().unwrap().to_owned()),
        );
        match page.continuation {
            Some(next) => token = Some(next),
            None => return ids,
        }
    }
}

/// The same query answered by scanning every twin, without any index.
fn scanned_ids(hub: &Hub, text: &str) -> Vec<String> {
    let query = twinhub_query::CompiledQuery::parse(text).unwrap();
    hub.snapshot()
        .devices
        .values()
        .filter(|record| query.matches(&***record))
        .map(|record| record.identity.device_id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_on_large_registries_build_indexes_that_stay_exact_under_writes() {
    // Scenario: 10,050 twins, a tag equality query builds an index; then twins move in and out of the
    // result (tag changes, delete, create) and every query right after a write equals a full scan.
    let store = Arc::new(MemoryStore::default());
    {
        let now = twinhub_core::Timestamp::now();
        let rules = TwinRules::default();
        let mut records = store.records.lock().unwrap();
        for n in 0..10_050 {
            let name = format!("dev{n:05}");
            let twin = twinhub_core::Twin::new(now)
                .patched(
                    &tags(serde_json::json!({"region": format!("r{}", n % 50)})),
                    now,
                    &rules,
                )
                .unwrap()
                .0;
            let identity = draft(&name).into_identity(None, now, |_| None).expect("no edge scopes");
            records.insert(id(&name), DeviceRecord::new(identity, twin, Default::default()));
        }
    }
    let hub = hub_with(Arc::clone(&store)).await;
    let text = "SELECT * FROM devices WHERE tags.region = 'r7'";
    let either = "SELECT * FROM devices WHERE tags.region IN ['r7', 'r8'] AND IS_DEFINED(deviceId)";
    assert_eq!(query_ids(&hub, text).await.len(), 201);
    assert_eq!(hub.snapshot().indexes.len(), 1, "the queried path is indexed");
    assert_eq!(query_ids(&hub, text).await, scanned_ids(&hub, text));

    hub.patch_twin(id("dev00007"), tags(serde_json::json!({"region": "r9"})), IfMatch::Any)
        .await
        .unwrap();
    hub.patch_twin(id("dev00009"), tags(serde_json::json!({"region": "r7"})), IfMatch::Any)
        .await
        .unwrap();
    hub.patch_twin(id("dev00057"), tags(serde_json::json!({"region": null})), IfMatch::Any)
        .await
        .unwrap();
    hub.delete_device(id("dev00107"), IfMatch::Any).await.unwrap();
    hub.put_device(draft("new-device"), IfMatch::Absent).await.unwrap();
    hub.patch_twin(
        id("new-device"),
        tags(serde_json::json!({"region": "r7"})),
        IfMatch::Any,
    )
    .await
    .unwrap();
    let after = query_ids(&hub, text).await;
    assert_eq!(after, scanned_ids(&hub, text));
    assert!(after.contains(&"dev00009".to_owned()) && after.contains(&"new-device".to_owned()));
    assert!(!after.contains(&"dev00007".to_owned()) && !after.contains(&"dev00107".to_owned()));
    assert!(!after.contains(&"dev00057".to_owned()));
    assert_eq!(after.len(), 201 - 3 + 2);
    assert_eq!(query_ids(&hub, either).await, scanned_ids(&hub, either));
    for text in [
        "SELECT * FROM devices WHERE tags.region > 'r45'",
        "SELECT * FROM devices WHERE 'r12' >= tags.region AND tags.region >= 'r1'",
        "SELECT * FROM devices WHERE STARTSWITH(tags.region, 'r4')",
        "SELECT * FROM devices WHERE tags.region < 5",
    ] {
        let found = query_ids(&hub, text).await;
        assert_eq!(found, scanned_ids(&hub, text), "{text}");
    }
    assert_eq!(
        hub.snapshot().indexes.len(),
        1,
        "one index serves every shape on its path"
    );
    let by_id = "SELECT * FROM devices WHERE deviceId IN ['dev00001', 'nope', 'dev00003'] AND tags.region = 'r1'";
    assert_eq!(query_ids(&hub, by_id).await, ["dev00001"]);
}

#[tokio::test]
async fn a_device_is_connected_while_it_has_a_connection_and_not_after_a_restart() {
    use twinhub_core::ConnectionState::{Connected, Disconnected};
    let store = Arc::new(MemoryStore::default());
    let hub = hub_with(Arc::clone(&store)).await;
    hub.put_device(draft("d1"), IfMatch::Absent).await.unwrap();
    assert_eq!(hub.device(&id("d1")).unwrap().presence.connection_state, Disconnected);

    // A session takeover: the new connection opens before the old one closes.
    let record = hub.device_connected(id("d1")).await.unwrap();
    assert_eq!(record.presence.connection_state, Connected);
    assert!(record.presence.last_activity.is_some());
    let connected_at = record.presence.connection_state_updated;
    hub.device_connected(id("d1")).await.unwrap();
    hub.device_disconnected(id("d1")).await.unwrap();
    let record = hub.device(&id("d1")).unwrap();
    assert_eq!(record.presence.connection_state, Connected);
    assert_eq!(record.presence.connection_state_updated, connected_at);
    assert_eq!(hub.connected_devices(), 1);

    // A reported patch records activity in the same write.
    let before = hub.device(&id("d1")).unwrap().presence.last_activity.unwrap();
    let patch = ReportedPatch::from_json(&serde_json::json!({"a": 1}), &TwinRules::default()).unwrap();
    let record = hub.patch_reported(id("d1"), patch).await.unwrap();
    assert!(record.presence.last_activity.unwrap() > before);

    // Stored while connected (a crash): loaded as disconnected.
    let restarted = hub_with(Arc::clone(&store)).await;
    assert_eq!(
        restarted.device(&id("d1")).unwrap().presence.connection_state,
        Disconnected
    );

    hub.device_disconnected(id("d1")).await.unwrap();
    let record = hub.device(&id("d1")).unwrap();
    assert_eq!(record.presence.connection_state, Disconnected);
    assert!(record.presence.connection_state_updated > connected_at);
    assert_eq!(hub.connected_devices(), 0);
    assert!(matches!(
        hub.device_connected(id("nobody")).await,
        Err(HubError::DeviceNotFound(_))
    ));
}

/// Every page of a query over `devices.modules`, as `<device>/<module>`.
async fn query_module_ids(hub: &Hub, text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = hub.query(text, Some(500), token.as_deref()).await.unwrap();
        ids.extend(page.values().iter().map(|twin| {
            format!(
                "{}/{}",
                twin["deviceId"].as_str().unwrap(),
                twin["moduleId"].as_str().unwrap()
            )
        }));
        match page.continuation {
            Some(next) => token = Some(next),
            None => return ids,
        }
    }
}

/// Adds a module to `device` and tags it with `role`.
async fn add_module(hub: &Hub, device: &str, module_id: &str, role: &str) {
    let (device, module_id) = (id(device), twinhub_core::ModuleId::new(module_id).unwrap());
    let draft = twinhub_core::module::ModuleDraft::from_json(&serde_json::json!({}), &device, &module_id).unwrap();
    hub.put_module(device.clone(), draft, IfMatch::Absent).await.unwrap();
    hub.patch_module_twin(device, module_id, tags(serde_json::json!({"role": role})), IfMatch::Any)
        .await
        .unwrap();
}

/// The same module query answered by scanning every module twin.
fn scanned_module_ids(hub: &Hub, text: &str) -> Vec<String> {
    let query = twinhub_query::CompiledQuery::parse(text).unwrap();
    hub.snapshot()
        .modules
        .values()
        .filter(|module| query.matches(&***module))
        .map(|module| format!("{}/{}", module.device_id(), module.module_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_queries_on_large_registries_build_module_indexes_that_stay_exact_under_writes() {
    // Scenario: 2,520 devices with 4 modules each (10,080 module twins) tagged with a role; a tag query
    // over devices.modules builds a module index (and none over devices); then modules move in and out
    // of the result (retag, module delete, device delete taking its modules, a new module) and every
    // query right after a write equals a full scan.
    use twinhub_core::ModuleId;
    let store = Arc::new(MemoryStore::default());
    {
        let now = twinhub_core::Timestamp::now();
        let mut records = store.records.lock().unwrap();
        for n in 0..2_520 {
            let name = format!("dev{n:05}");
            let identity = draft(&name).into_identity(None, now, |_| None).expect("no edge scopes");
            let twin = twinhub_core::Twin::new(now);
            records.insert(id(&name), DeviceRecord::new(identity, twin, Default::default()));
        }
    }
    let hub = hub_with(Arc::clone(&store)).await;
    let module = |text: &str| ModuleId::new(text).unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for n in 0..2_520 {
        let hub = Arc::clone(&hub);
        writers.spawn(async move {
            for m in 0..4 {
                let role = format!("r{}", (n * 4 + m) % 50);
                add_module(&hub, &format!("dev{n:05}"), &format!("m{m}"), &role).await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let text = "SELECT * FROM devices.modules WHERE tags.role = 'r7'";
    assert_eq!(query_module_ids(&hub, text).await.len(), 202);
    assert_eq!(
        hub.snapshot().module_indexes.len(),
        1,
        "the queried module path is indexed"
    );
    assert_eq!(hub.snapshot().indexes.len(), 0, "no index over device twins");
    assert_eq!(query_module_ids(&hub, text).await, scanned_module_ids(&hub, text));

    // dev00001/m3 (role r7) is retagged, dev00002/m1 (r9) joins, dev00014/m1 (r7) is deleted, dev00026
    // (with dev00026/m3 in r7) is deleted, and a new module joins.
    let retag = |device: &str, module_id: &str, role: &str| {
        hub.patch_module_twin(
            id(device),
            module(module_id),
            tags(serde_json::json!({"role": role})),
            IfMatch::Any,
        )
    };
    retag("dev00001", "m3", "r8").await.unwrap();
    retag("dev00002", "m1", "r7").await.unwrap();
    hub.delete_module(id("dev00014"), module("m1"), IfMatch::Any)
        .await
        .unwrap();
    hub.delete_device(id("dev00026"), IfMatch::Any).await.unwrap();
    add_module(&hub, "dev00000", "late", "r7").await;
    let after = query_module_ids(&hub, text).await;
    assert_eq!(after, scanned_module_ids(&hub, text));
    for gone in ["dev00001/m3", "dev00014/m1", "dev00026/m3"] {
        assert!(!after.contains(&gone.to_owned()), "{gone}");
    }
    for joined in ["dev00002/m1", "dev00000/late"] {
        assert!(after.contains(&joined.to_owned()), "{joined}");
    }
    assert_eq!(after.len(), 202 - 3 + 2);
    for text in [
        "SELECT * FROM devices.modules WHERE tags.role IN ['r7', 'r8'] AND moduleId = 'm3'",
        "SELECT * FROM devices.modules WHERE tags.role > 'r45'",
        "SELECT * FROM devices.modules WHERE STARTSWITH(tags.role, 'r4')",
        "SELECT * FROM devices.modules WHERE deviceId IN ['dev00003', 'nope', 'dev00001'] AND moduleId != 'm0'",
        "SELECT * FROM devices.modules WHERE deviceId = 'dev00026'",
    ] {
        let found = query_module_ids(&hub, text).await;
        assert_eq!(found, scanned_module_ids(&hub, text), "{text}");
    }
    assert_eq!(
        query_module_ids(
            &hub,
            "SELECT * FROM devices.modules WHERE deviceId IN ['dev00003', 'dev00001'] AND moduleId != 'm0'"
        )
        .await,
        [
            "dev00001/m1",
            "dev00001/m2",
            "dev00001/m3",
            "dev00003/m1",
            "dev00003/m2",
            "dev00003/m3"
        ]
    );
    assert_eq!(
        hub.snapshot().module_indexes.len(),
        1,
        "one index serves every shape on its path"
    );
}
