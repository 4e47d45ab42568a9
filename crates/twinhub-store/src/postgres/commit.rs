//! A commit: one transaction that takes the next commit sequence number, then writes a batch with one
//! multi-row statement per table and kind of write, all sent at once.
//!
//! Measured (1,000 batches of 100 device upserts, ~750-byte records, local PostgreSQL 15): the multi-row
//! statements (`unnest` of arrays) commit about 1.6x as fast as one pipelined single-row statement per
//! write, and about as fast for batches of one. BEGIN, the sequence number, the writes and COMMIT are
//! four round trips; sending the sequence number and the writes together measured within noise, since
//! COMMIT's WAL flush is most of the time.

use super::batch::{Grouped, Rows};
use super::connection::{Connection, PostgresError};
use crate::StoreError;
use tokio_postgres::types::ToSql;

fn write_error(error: tokio_postgres::Error) -> StoreError {
    StoreError::Write(Box::new(PostgresError::from(error)))
}

/// Applies `grouped` in one transaction; durable when this returns `Ok`.
pub(super) async fn commit(connection: &mut Connection, grouped: Grouped) -> Result<(), StoreError> {
    let Connection { client, statements } = connection;
    // Dropped without `commit` (an error below), the transaction rolls back.
    let transaction = client.transaction().await.map_err(write_error)?;
    // First, the next commit sequence number. The UPDATE locks hub_seq's one row until this
    // transaction ends, so a second committer (another node) waits here for the first to commit:
    // commits take their seq and become visible in the same order, which lets a reader that has seen
    // seq n be sure nothing at or below n commits later. (A sequence or bigserial does not: numbers
    // are taken at write time and transactions commit in another order.)
    let seq: i64 = transaction
        .query_one(&statements.bump_seq, &[])
        .await
        .map_err(write_error)?
        .try_get(0)
        .map_err(write_error)?;

    // A device delete is a tombstone: record NULL, with this commit's seq.
    let (device_ids, device_records): (Vec<String>, Vec<Option<Vec<u8>>>) = grouped.devices.into_iter().unzip();
    let sessions = Rows::of(grouped.sessions);
    let groups = Rows::of(grouped.consumer_groups);
    let c2d = Rows::of(grouped.cloud_to_device);
    let (c2d_upsert_devices, c2d_upsert_numbers): (Vec<String>, Vec<i64>) = c2d.upsert_keys.into_iter().unzip();
    let (c2d_delete_devices, c2d_delete_numbers): (Vec<String>, Vec<i64>) = c2d.delete_keys.into_iter().unzip();
    let feedback = Rows::of(grouped.feedback);

    // Every statement of the batch at once: tokio-postgres sends them down the connection in the
    // order they are first polled (try_join_all polls in order) and PostgreSQL runs them in that
    // order, so the writes cost one round trip whatever the batch holds.
    type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
    let mut pending: Vec<(&tokio_postgres::Statement, Params<'_>)> = Vec::new();
    if !device_ids.is_empty() {
        pending.push((&statements.upsert_devices, vec![&seq, &device_ids, &device_records]));
    }
    if !sessions.upsert_keys.is_empty() {
        pending.push((
            &statements.upsert_sessions,
            vec![&sessions.upsert_keys, &sessions.upsert_values],
        ));
    }
    if !sessions.delete_keys.is_empty() {
        pending.push((&statements.delete_sessions, vec![&sessions.delete_keys]));
    }
    if !groups.upsert_keys.is_empty() {
        pending.push((
            &statements.upsert_consumer_groups,
            vec![&groups.upsert_keys, &groups.upsert_values],
        ));
    }
    if !groups.delete_keys.is_empty() {
        pending.push((&statements.delete_consumer_groups, vec![&groups.delete_keys]));
    }
    if !c2d_upsert_devices.is_empty() {
        pending.push((
            &statements.upsert_c2d,
            vec![&c2d_upsert_devices, &c2d_upsert_numbers, &c2d.upsert_values],
        ));
    }
    if !c2d_delete_devices.is_empty() {
        pending.push((&statements.delete_c2d, vec![&c2d_delete_devices, &c2d_delete_numbers]));
    }
    if !feedback.upsert_keys.is_empty() {
        pending.push((
            &statements.upsert_feedback,
            vec![&feedback.upsert_keys, &feedback.upsert_values],
        ));
    }
    if !feedback.delete_keys.is_empty() {
        pending.push((&statements.delete_feedback, vec![&feedback.delete_keys]));
    }
    futures_util::future::try_join_all(
        pending
            .iter()
            .map(|(statement, params)| transaction.execute(*statement, params)),
    )
    .await
    .map_err(write_error)?;
    // Durable when this returns: COMMIT waits for the WAL flush (synchronous_commit on).
    transaction.commit().await.map_err(write_error)
}
