//! The `Store` contract, checked the same way against every store: what a batch commits is what a new
//! instance over the same place loads. Each check is an async fn over a [`Harness`]; `contract!` makes a
//! test of each check for each store, so another store is one more line at the bottom.
//!
//! The PostgreSQL tests need a server: see `support/mod.rs` (`TWINHUB_TEST_POSTGRES_URL`,
//! `TWINHUB_REQUIRE_POSTGRES`).

mod support;

use support::{id, load_sorted, record, session, upsert, EmbeddedHarness, Harness, PostgresHarness};
use twinhub_core::c2d::{Ack, DeviceQueue, Feedback, FeedbackRecord, FeedbackStatus, OutgoingMessage};
use twinhub_core::{DeviceRecord, Timestamp};
use twinhub_store::StoreWrite;

mod checks {
    use super::*;

    pub async fn committed_batches_read_back_after_reopening<H: Harness>(harness: &H) {
        let written = [record("a", 1), record("b", 2), record("c", 3)];
        {
            let store = harness.open().await;
            store
                .commit(written.iter().map(upsert).collect())
                .await
                .expect("commit");
            store.commit(vec![StoreWrite::Delete(id("b"))]).await.expect("commit");
        }
        let store = harness.open().await;
        assert_eq!(load_sorted(&*store).await, vec![written[0].clone(), written[2].clone()]);
        // An upsert of a stored device replaces its record.
        let changed = record("a", 10);
        store.commit(vec![upsert(&changed)]).await.expect("commit");
        drop(store);
        let store = harness.open().await;
        assert_eq!(load_sorted(&*store).await, vec![changed, written[2].clone()]);
    }

    pub async fn within_a_batch_the_last_write_of_a_device_wins<H: Harness>(harness: &H) {
        // Records are made once: each carries random keys and a generation id.
        let [stored, stored_again, new, back, twice_first, twice] = [
            ("stored", 1),
            ("stored", 2),
            ("new", 1),
            ("back", 1),
            ("twice", 1),
            ("twice", 2),
        ]
        .map(|(device, tag)| record(device, tag));
        {
            let store = harness.open().await;
            store.commit(vec![upsert(&stored)]).await.expect("commit");
            store
                .commit(vec![
                    // Upsert then delete: deleted, whether it was stored before or not.
                    upsert(&stored_again),
                    StoreWrite::Delete(id("stored")),
                    upsert(&new),
                    StoreWrite::Delete(id("new")),
                    // Delete then upsert: present.
                    StoreWrite::Delete(id("back")),
                    upsert(&back),
                    // Two upserts: the second.
                    upsert(&twice_first),
                    upsert(&twice),
                    // A device that never was.
                    StoreWrite::Delete(id("never")),
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        assert_eq!(load_sorted(&*store).await, vec![back, twice]);
    }

    pub async fn sessions_round_trip_and_delete<H: Harness>(harness: &H) {
        let final_d1 = session("d1", &["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"]);
        let device = record("d1", 1);
        {
            let store = harness.open().await;
            store
                .commit(vec![
                    upsert(&device),
                    StoreWrite::UpsertSession(session("d1", &["$iothub/twin/res/#"])),
                    StoreWrite::UpsertSession(session("d2", &["$iothub/methods/POST/#"])),
                    StoreWrite::UpsertSession(session("d3", &[])),
                ])
                .await
                .expect("commit");
            store
                .commit(vec![
                    StoreWrite::UpsertSession(final_d1.clone()),
                    StoreWrite::DeleteSession("d2".into()),
                    StoreWrite::DeleteSession("nobody".into()),
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        assert_eq!(load_sorted(&*store).await, vec![device]);
        let mut sessions = store.load_sessions().await.expect("load sessions");
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        assert_eq!(sessions, vec![final_d1, session("d3", &[])]);
    }

    pub async fn consumer_groups_round_trip_and_delete<H: Harness>(harness: &H) {
        {
            let store = harness.open().await;
            store
                .commit(vec![
                    StoreWrite::UpsertConsumerGroup("Alpha".into()),
                    StoreWrite::UpsertConsumerGroup("beta".into()),
                    StoreWrite::UpsertConsumerGroup("Gamma".into()),
                ])
                .await
                .expect("commit");
            // Keyed without case: "ALPHA" is "Alpha"; the name is kept as last given.
            store
                .commit(vec![
                    StoreWrite::DeleteConsumerGroup("ALPHA".into()),
                    StoreWrite::UpsertConsumerGroup("GAMMA".into()),
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        let mut groups = store.load_consumer_groups().await.expect("load consumer groups");
        groups.sort();
        assert_eq!(groups, vec!["GAMMA".to_owned(), "beta".to_owned()]);
        assert!(store.load_all().await.expect("load_all").is_empty());
    }

    pub async fn settings_round_trip_and_the_last_write_wins<H: Harness>(harness: &H) {
        let setting = |name: &str, value: &str| StoreWrite::PutSetting {
            name: name.into(),
            value: value.into(),
        };
        {
            let store = harness.open().await;
            store
                .commit(vec![setting("routing", r#"{"routes":[]}"#), setting("other", "1")])
                .await
                .expect("commit");
            // In one batch and across batches, the last write of a name is what stays.
            store
                .commit(vec![
                    setting("routing", "2"),
                    setting("routing", r#"{"fallback":false}"#),
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        let mut settings = store.load_settings().await.expect("load settings");
        settings.sort();
        assert_eq!(
            settings,
            vec![
                ("other".to_owned(), "1".to_owned()),
                ("routing".to_owned(), r#"{"fallback":false}"#.to_owned()),
            ]
        );
        assert_eq!(store.load().await.expect("load").settings.len(), 2);
    }

    pub async fn modules_round_trip_and_delete<H: Harness>(harness: &H) {
        let module = |device: &str, module: &str| {
            let (device, module) = (id(device), twinhub_core::ModuleId::new(module).unwrap());
            let draft = twinhub_core::module::ModuleDraft::from_json(
                &serde_json::json!({"managedBy": "ops"}),
                &device,
                &module,
            )
            .unwrap();
            std::sync::Arc::new(draft.into_record(None, Timestamp(1_700_000_000_000_000_000)).unwrap())
        };
        // "d1" is a prefix of "d10": their modules must not mix.
        let (d1_m1, d1_m2, d10_m1) = (module("d1", "m1"), module("d1", "m2"), module("d10", "m1"));
        {
            let store = harness.open().await;
            store
                .commit(vec![
                    StoreWrite::UpsertModule(d1_m1.clone()),
                    StoreWrite::UpsertModule(d1_m2.clone()),
                    StoreWrite::UpsertModule(d10_m1.clone()),
                ])
                .await
                .expect("commit");
            store
                .commit(vec![StoreWrite::DeleteModule {
                    device_id: id("d1"),
                    module_id: twinhub_core::ModuleId::new("m2").unwrap(),
                }])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        let mut modules = store.load_modules().await.expect("load modules");
        modules.sort_by_key(|module| (module.device_id().clone(), module.module_id.clone()));
        assert_eq!(modules, vec![(*d1_m1).clone(), (*d10_m1).clone()]);
        assert_eq!(store.load().await.expect("load").modules.len(), 2);
    }

    pub async fn jobs_and_their_device_steps_round_trip_and_the_last_write_wins<H: Harness>(harness: &H) {
        use twinhub_core::job::{parse_request, DeviceJobRecord, DeviceJobStatus, JobStatus};
        let now = Timestamp(1_700_000_000_000_000_000);
        let job = |id: &str| {
            let body = serde_json::json!({"type": "scheduleUpdateTwin", "queryCondition": "*",
                "updateTwin": {"tags": {"firmware": "2.0"}}});
            let job_id = twinhub_core::JobId::new(id).unwrap();
            parse_request(&job_id, &body, &twinhub_core::TwinRules::default(), now).unwrap()
        };
        // "j1" is a prefix of "j10": their steps must not mix.
        let (j1, j10) = (job("j1"), job("j10"));
        let pending = DeviceJobRecord::pending(&j1, id("d1"), now);
        let done = pending.moved(DeviceJobStatus::Completed, now);
        let other = DeviceJobRecord::pending(&j10, id("d1"), now);
        let running = j1.moved(JobStatus::Running, now);
        {
            let store = harness.open().await;
            store
                .commit(vec![
                    StoreWrite::UpsertJob(std::sync::Arc::new(j1.clone())),
                    StoreWrite::UpsertJob(std::sync::Arc::new(j10.clone())),
                    StoreWrite::UpsertDeviceJob(std::sync::Arc::new(pending)),
                    StoreWrite::UpsertDeviceJob(std::sync::Arc::new(other.clone())),
                ])
                .await
                .expect("commit");
            store
                .commit(vec![
                    StoreWrite::UpsertJob(std::sync::Arc::new(running.clone())),
                    StoreWrite::UpsertDeviceJob(std::sync::Arc::new(done.clone())),
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        let mut entries = store.load_jobs().await.expect("load jobs");
        let key = |entry: &twinhub_store::codec::JobEntry| match entry {
            twinhub_store::codec::JobEntry::Job(job) => (job.job_id.to_string(), String::new()),
            twinhub_store::codec::JobEntry::DeviceJob(step) => (step.job_id.to_string(), step.device_id.to_string()),
        };
        entries.sort_by_key(key);
        use twinhub_store::codec::JobEntry;
        assert_eq!(
            entries,
            vec![
                JobEntry::Job(running),
                JobEntry::DeviceJob(done),
                JobEntry::Job(j10),
                JobEntry::DeviceJob(other),
            ]
        );
        assert_eq!(store.load().await.expect("load").jobs.len(), 4);
    }

    pub async fn cloud_to_device_messages_and_feedback_round_trip_and_delete<H: Harness>(harness: &H) {
        let now = Timestamp(1_700_000_000_000_000_000);
        // "d1" is a prefix of "d10": their messages must not mix.
        let (d1, d10) = (id("d1"), id("d10"));
        let mut queue = DeviceQueue::default();
        for message_id in ["a", "b", "c"] {
            let message = OutgoingMessage {
                message_id: Some(message_id.into()),
                ack: Ack::Full,
                body: message_id.as_bytes().to_vec(),
                properties: vec![("k".into(), "v".into())],
                ..OutgoingMessage::default()
            };
            queue.enqueue(message, now).expect("room in the queue");
        }
        let messages = queue.messages().to_vec();
        let mut redelivered = messages[2].clone();
        redelivered.delivery_count = 2;
        let feedback = |status| FeedbackRecord {
            device_id: "d1".into(),
            device_generation_id: "1".into(),
            feedback: Feedback {
                original_message_id: Some("x".into()),
                status,
                enqueued_time: now,
            },
        };
        let c2d = |device_id: &twinhub_core::DeviceId, message: &twinhub_core::c2d::QueuedMessage| {
            StoreWrite::UpsertCloudToDevice {
                device_id: device_id.clone(),
                message: Box::new(message.clone()),
            }
        };
        {
            let store = harness.open().await;
            let mut writes: Vec<StoreWrite> = messages.iter().map(|message| c2d(&d1, message)).collect();
            writes.push(c2d(&d10, &messages[0]));
            for (sequence_number, status) in [
                (7, FeedbackStatus::Rejected),
                (8, FeedbackStatus::Rejected),
                (9, FeedbackStatus::Rejected),
            ] {
                writes.push(StoreWrite::UpsertFeedback {
                    sequence_number,
                    record: feedback(status),
                });
            }
            store.commit(writes).await.expect("commit");
            store
                .commit(vec![
                    // d1's message 0 goes; d10's message 0 stays.
                    StoreWrite::DeleteCloudToDevice {
                        device_id: d1.clone(),
                        sequence_number: 0,
                    },
                    c2d(&d1, &redelivered),
                    StoreWrite::DeleteFeedback(7),
                    StoreWrite::UpsertFeedback {
                        sequence_number: 9,
                        record: feedback(FeedbackStatus::Expired),
                    },
                ])
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        let mut loaded = store.load_cloud_to_device().await.expect("load messages");
        loaded.sort_by(|a, b| (&a.0, a.1.sequence_number).cmp(&(&b.0, b.1.sequence_number)));
        assert_eq!(
            loaded,
            vec![
                (d1.clone(), messages[1].clone()),
                (d1, redelivered),
                (d10, messages[0].clone())
            ]
        );
        let mut records = store.load_feedback().await.expect("load feedback");
        records.sort_by_key(|(number, _)| *number);
        assert_eq!(
            records,
            vec![
                (8, feedback(FeedbackStatus::Rejected)),
                (9, feedback(FeedbackStatus::Expired))
            ]
        );
    }

    pub async fn an_empty_batch_is_fine<H: Harness>(harness: &H) {
        let device = record("a", 1);
        {
            let store = harness.open().await;
            store.commit(Vec::new()).await.expect("an empty commit on a new store");
            assert!(store.load_all().await.expect("load_all").is_empty());
            assert!(store.load_sessions().await.expect("load_sessions").is_empty());
            assert!(store
                .load_consumer_groups()
                .await
                .expect("load_consumer_groups")
                .is_empty());
            assert!(store
                .load_cloud_to_device()
                .await
                .expect("load_cloud_to_device")
                .is_empty());
            assert!(store.load_feedback().await.expect("load_feedback").is_empty());
            store.commit(vec![upsert(&device)]).await.expect("commit");
            store.commit(Vec::new()).await.expect("an empty commit");
        }
        let store = harness.open().await;
        store.commit(Vec::new()).await.expect("an empty commit after reopening");
        assert_eq!(load_sorted(&*store).await, vec![device]);
    }

    pub async fn a_thousand_records_in_one_batch_all_come_back<H: Harness>(harness: &H) {
        let written: Vec<DeviceRecord> = (0..1000).map(|n| record(&format!("device-{n:04}"), n)).collect();
        {
            let store = harness.open().await;
            store
                .commit(written.iter().map(upsert).collect())
                .await
                .expect("commit");
        }
        let store = harness.open().await;
        assert_eq!(load_sorted(&*store).await, written);
    }
}

/// `contract! { name: Harness, ... }`: a module per store with a test per check.
macro_rules! contract {
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
                contract!(@checks $harness;
                    committed_batches_read_back_after_reopening,
                    within_a_batch_the_last_write_of_a_device_wins,
                    sessions_round_trip_and_delete,
                    consumer_groups_round_trip_and_delete,
                    settings_round_trip_and_the_last_write_wins,
                    modules_round_trip_and_delete,
                    jobs_and_their_device_steps_round_trip_and_the_last_write_wins,
                    cloud_to_device_messages_and_feedback_round_trip_and_delete,
                    an_empty_batch_is_fine,
                    a_thousand_records_in_one_batch_all_come_back,
                );
            }
        )*
    };
}

contract! {
    embedded: EmbeddedHarness,
    postgres: PostgresHarness,
}
