//! Cloud-to-device queues through the hub service on the embedded store: what a device receives, how
//! settlements and feedback follow IoT Hub's rules, `cloudToDeviceMessageCount`, and what a restart
//! keeps (the messages and their delivery counts, the feedback not yet received) and drops (locks).

use std::sync::Arc;
use std::time::Duration;
use twinhub_core::c2d::{Ack, FeedbackStatus, OutgoingMessage, QueueError, Settlement, QUEUE_DEPTH_MAX};
use twinhub_core::etag::IfMatch;
use twinhub_core::json::DeviceDraft;
use twinhub_core::DeviceId;
use twinhub_hub::{Hub, HubConfig, HubError};
use twinhub_store::EmbeddedStore;

fn id(text: &str) -> DeviceId {
    DeviceId::new(text).unwrap()
}

async fn open(dir: &std::path::Path) -> Arc<Hub> {
    // The previous hub's writer lets go of the store as it winds down.
    for _ in 0..100 {
        if let Ok(store) = EmbeddedStore::open(dir) {
            return Hub::start(Arc::new(store), HubConfig::default()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store stayed locked");
}

async fn create(hub: &Hub, device: &str) {
    let draft = DeviceDraft::from_json(&serde_json::json!({ "deviceId": device }), "deviceId").unwrap();
    hub.put_device(draft, IfMatch::Absent).await.unwrap();
}

fn message(message_id: &str, ack: Ack) -> OutgoingMessage {
    OutgoingMessage {
        message_id: Some(message_id.into()),
        ack,
        body: message_id.as_bytes().to_vec(),
        ..OutgoingMessage::default()
    }
}

fn count(hub: &Hub, device: &str) -> u32 {
    hub.device(&id(device)).unwrap().identity.cloud_to_device_message_count
}

#[tokio::test]
async fn a_queue_delivers_in_order_settles_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path()).await;
    create(&hub, "d1").await;
    for n in ["a", "b", "c"] {
        hub.send_cloud_to_device(id("d1"), message(n, Ack::Full)).await.unwrap();
    }
    assert_eq!(count(&hub, "d1"), 3);

    let first = hub.receive_cloud_to_device(id("d1")).await.unwrap().unwrap();
    assert_eq!(
        (first.message.message_id.as_deref(), first.delivery_count),
        (Some("a"), 1)
    );
    let token = first.lock.clone().unwrap().token;
    hub.settle_cloud_to_device(id("d1"), token.clone(), Settlement::Complete)
        .await
        .unwrap();
    assert!(matches!(
        hub.settle_cloud_to_device(id("d1"), token, Settlement::Complete).await,
        Err(HubError::CloudToDevice(QueueError::LockLost))
    ));
    let feedback = hub.feedback().take(10).await;
    assert_eq!(feedback.len(), 1);
    assert_eq!(feedback[0].1.feedback.status, FeedbackStatus::Success);
    assert_eq!(feedback[0].1.device_id, "d1");
    // Taken but never confirmed received: it must come back after a restart.

    let second = hub.receive_cloud_to_device(id("d1")).await.unwrap().unwrap();
    hub.settle_cloud_to_device(id("d1"), second.lock.clone().unwrap().token, Settlement::Abandon)
        .await
        .unwrap();
    let again = hub.receive_cloud_to_device(id("d1")).await.unwrap().unwrap();
    assert_eq!(
        (again.sequence_number, again.delivery_count),
        (second.sequence_number, 2)
    );
    assert_eq!(count(&hub, "d1"), 2);

    drop(hub);
    let hub = open(dir.path()).await;
    assert_eq!(count(&hub, "d1"), 2, "the count comes back with the queue");
    // The lock did not survive; the delivery count did.
    let after = hub.receive_cloud_to_device(id("d1")).await.unwrap().unwrap();
    assert_eq!(
        (after.message.message_id.as_deref(), after.delivery_count),
        (Some("b"), 3)
    );
    let feedback = tokio::time::timeout(Duration::from_secs(1), hub.feedback().take(10))
        .await
        .expect("unconfirmed feedback is kept");
    assert_eq!(feedback[0].1.feedback.status, FeedbackStatus::Success);
    hub.feedback_received(feedback.iter().map(|(number, _)| *number).collect())
        .await
        .unwrap();

    drop(hub);
    let hub = open(dir.path()).await;
    assert!(hub.feedback().is_empty(), "confirmed feedback is gone for good");
    assert_eq!(hub.purge_cloud_to_device(id("d1")).await.unwrap(), 2);
    assert_eq!(count(&hub, "d1"), 0);
    assert!(hub.receive_cloud_to_device(id("d1")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_full_queue_an_unknown_device_and_a_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path()).await;
    assert!(matches!(
        hub.send_cloud_to_device(id("nobody"), message("x", Ack::None)).await,
        Err(HubError::DeviceNotFound(_))
    ));
    create(&hub, "full").await;
    for n in 0..QUEUE_DEPTH_MAX {
        hub.send_cloud_to_device(id("full"), message(&n.to_string(), Ack::None))
            .await
            .unwrap();
    }
    assert!(matches!(
        hub.send_cloud_to_device(id("full"), message("one more", Ack::None))
            .await,
        Err(HubError::CloudToDevice(QueueError::QueueFull))
    ));
    assert_eq!(count(&hub, "full") as usize, QUEUE_DEPTH_MAX);

    // A deleted device's queue goes with it, also from the store.
    hub.delete_device(id("full"), IfMatch::Any).await.unwrap();
    create(&hub, "full").await;
    assert_eq!(count(&hub, "full"), 0);
    assert!(hub.receive_cloud_to_device(id("full")).await.unwrap().is_none());
    drop(hub);
    let hub = open(dir.path()).await;
    assert!(hub.receive_cloud_to_device(id("full")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_reject_dead_letters_with_negative_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path()).await;
    create(&hub, "d2").await;
    hub.send_cloud_to_device(id("d2"), message("r", Ack::Negative))
        .await
        .unwrap();
    hub.send_cloud_to_device(id("d2"), message("ok", Ack::Negative))
        .await
        .unwrap();
    let rejected = hub.receive_cloud_to_device(id("d2")).await.unwrap().unwrap();
    hub.settle_cloud_to_device(id("d2"), rejected.lock.unwrap().token, Settlement::Reject)
        .await
        .unwrap();
    let completed = hub.receive_cloud_to_device(id("d2")).await.unwrap().unwrap();
    hub.settle_cloud_to_device(id("d2"), completed.lock.unwrap().token, Settlement::Complete)
        .await
        .unwrap();
    // Negative ack: the rejection is reported, the completion is not.
    let feedback = hub.feedback().take(10).await;
    assert_eq!(feedback.len(), 1);
    assert_eq!(
        (
            feedback[0].1.feedback.original_message_id.as_deref(),
            feedback[0].1.feedback.status
        ),
        (Some("r"), FeedbackStatus::Rejected)
    );
}
