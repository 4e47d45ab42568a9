//! Presence leases on PostgreSQL (`node_leases`, `held_devices`; see `schema.rs`): small statements on
//! the reader connection, outside the commit turn. The presence they protect is written by commits; these
//! tables only say which node stamped which device, so that a lapsed node's devices can be found.

use std::collections::HashMap;
use tokio_postgres::Client;
use twinhub_core::Timestamp;

use super::schema;
use crate::cluster::{HoldChange, Holder, LapsedNode, LEASE_LAPSES_AFTER};
use crate::StoreError;

fn failed(error: tokio_postgres::Error) -> StoreError {
    super::connection::write_failure(error)
}

pub(super) async fn renew_lease(client: &Client, node: &str) -> Result<bool, StoreError> {
    if client.execute(schema::RENEW_LEASE, &[&node]).await.map_err(failed)? == 1 {
        return Ok(true);
    }
    client.execute(schema::TAKE_LEASE, &[&node]).await.map_err(failed)?;
    Ok(false)
}

pub(super) async fn record_holds(client: &Client, node: &str, changes: &[HoldChange]) -> Result<(), StoreError> {
    // The last change of each device or module wins: a statement may not touch a row twice.
    let mut last: HashMap<&Holder, Option<Timestamp>> = HashMap::with_capacity(changes.len());
    for change in changes {
        match change {
            HoldChange::Held { holder, stamp } => last.insert(holder, Some(*stamp)),
            HoldChange::Released(holder) => last.insert(holder, None),
        };
    }
    let (mut held, mut stamps, mut released) = (Vec::new(), Vec::new(), Vec::new());
    for (holder, stamp) in last {
        match stamp {
            Some(stamp) => {
                held.push(holder.key());
                stamps.push(stamp.0);
            }
            None => released.push(holder.key()),
        }
    }
    if !held.is_empty() {
        client
            .execute(schema::HOLD_DEVICES, &[&node, &held, &stamps])
            .await
            .map_err(failed)?;
    }
    if !released.is_empty() {
        client
            .execute(schema::RELEASE_DEVICES, &[&node, &released])
            .await
            .map_err(failed)?;
    }
    Ok(())
}

pub(super) async fn lapsed_nodes(client: &Client, own: &str) -> Result<Vec<LapsedNode>, StoreError> {
    let lapses_after = LEASE_LAPSES_AFTER.as_secs_f64();
    let nodes = client
        .query(schema::LAPSED_NODES, &[&lapses_after, &own])
        .await
        .map_err(super::connection::read_failure)?;
    let mut lapsed = Vec::with_capacity(nodes.len());
    for row in nodes {
        let node: String = row.try_get(0).map_err(|error| StoreError::Read(Box::new(error)))?;
        let rows = client
            .query(schema::HELD_BY, &[&node])
            .await
            .map_err(super::connection::read_failure)?;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0).map_err(|error| StoreError::Read(Box::new(error)))?;
            let stamp: i64 = row.try_get(1).map_err(|error| StoreError::Read(Box::new(error)))?;
            // A row no device or module could have is left for `forget_node` to remove with the rest.
            if let Some(holder) = Holder::from_key(&id) {
                held.push((holder, Timestamp(stamp)));
            }
        }
        lapsed.push(LapsedNode { node, held });
    }
    Ok(lapsed)
}

pub(super) async fn forget_node(client: &Client, node: &str) -> Result<(), StoreError> {
    // Held devices first: a node seen without a lease is never looked for again.
    client.execute(schema::FORGET_HELD, &[&node]).await.map_err(failed)?;
    client.execute(schema::FORGET_LEASE, &[&node]).await.map_err(failed)?;
    Ok(())
}
