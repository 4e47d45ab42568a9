//! Presence leases, in a cluster: a node that dies leaves its devices shown Connected, since no
//! connection of theirs closes where it was counted. So each node keeps a lease in the shared store and
//! records which devices it holds (and the `connectionStateUpdatedTime` it stamped them with); every node
//! looks now and then for leases that lapsed ([`twinhub_store::LEASE_LAPSES_AFTER`] without renewal) and
//! marks the lapsed node's devices Disconnected where their stamp is still that node's (a device that
//! moved on to another node was stamped by it), then forgets the node.
//!
//! A node that was only cut off finds, when it can renew again, that its lease had lapsed: it stamps its
//! devices Connected anew, since another node may have marked them Disconnected meanwhile.

use crate::writer::{WriteCommand, WriteOp};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use twinhub_store::{HoldChange, Store};

/// How often a node renews its lease (a fifth of the time it takes to lapse).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Every this many renewals, the node looks for lapsed leases.
const SWEEP_EVERY_RENEWALS: u32 = 2;
/// How long a failed record of holds waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Records the devices this node begins and stops holding, in commit order, batching whatever waits.
pub(crate) async fn record_holds(store: Arc<dyn Store>, mut changes: mpsc::UnboundedReceiver<Vec<HoldChange>>) {
    let mut pending: Vec<HoldChange> = Vec::new();
    loop {
        if pending.is_empty() {
            match changes.recv().await {
                Some(more) => pending.extend(more),
                None => return,
            }
        }
        while let Ok(more) = changes.try_recv() {
            pending.extend(more);
        }
        let Some(cluster) = store.cluster() else { return };
        match cluster.record_holds(&pending).await {
            Ok(()) => pending.clear(),
            Err(error) => {
                tracing::warn!(%error, changes = pending.len(), "recording the devices this node holds failed; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Renews this node's lease, stamps its devices anew when it had lapsed, and settles other nodes' lapsed
/// leases. Runs as long as the hub's writer does.
pub(crate) async fn keep_lease(store: Arc<dyn Store>, writes: mpsc::WeakSender<WriteCommand>) {
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals: u32 = 0;
    loop {
        ticker.tick().await;
        let Some(cluster) = store.cluster() else { return };
        match cluster.renew_lease().await {
            Ok(true) => {}
            // The first renewal takes the lease: nothing was held under it yet.
            Ok(false) if renewals == 0 => {}
            Ok(false) => {
                tracing::warn!(
                    lease = cluster.lease_name(),
                    "this node's lease had lapsed (it was cut off from the store): stamping its devices Connected anew"
                );
                if write(&writes, WriteOp::ReassertHolds).await.is_none() {
                    return;
                }
            }
            Err(error) => tracing::warn!(%error, "renewing this node's lease failed; trying again"),
        }
        renewals = renewals.wrapping_add(1);
        if renewals.is_multiple_of(SWEEP_EVERY_RENEWALS) && !settle_lapsed(&*store, &writes).await {
            return;
        }
    }
}

/// Settles every lapsed lease; false when the writer is gone.
async fn settle_lapsed(store: &dyn Store, writes: &mpsc::WeakSender<WriteCommand>) -> bool {
    let Some(cluster) = store.cluster() else { return false };
    let lapsed = match cluster.lapsed_nodes().await {
        Ok(lapsed) => lapsed,
        Err(error) => {
            tracing::warn!(%error, "looking for lapsed leases failed; looking again later");
            return true;
        }
    };
    for node in lapsed {
        let devices = node.held.len();
        match write(writes, WriteOp::ReleaseHolds(node.held)).await {
            None => return false,
            Some(Err(error)) => {
                tracing::warn!(node = node.node, %error, "disconnecting a lapsed node's devices failed; trying again later");
                continue;
            }
            Some(Ok(())) => {}
        }
        match cluster.forget_node(&node.node).await {
            Ok(()) => tracing::info!(
                node = node.node,
                devices,
                "a node's lease lapsed: the devices it held and nobody took over are Disconnected"
            ),
            Err(error) => {
                tracing::warn!(node = node.node, %error, "forgetting a lapsed node failed; trying again later")
            }
        }
    }
    true
}

/// Queues `op` and waits for it to be committed; `None` when the writer is gone.
async fn write(writes: &mpsc::WeakSender<WriteCommand>, op: WriteOp) -> Option<Result<(), crate::HubError>> {
    let writes = writes.upgrade()?;
    match crate::writer::submit(&writes, op).await {
        Err(crate::HubError::ShuttingDown) => None,
        result => Some(result.map(|_| ())),
    }
}
