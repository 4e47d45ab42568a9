//! The tables, created idempotently at every connection, and the statements a commit and a load run.
//!
//! Every value column holds exactly the bytes the embedded store keeps for the same thing
//! ([`crate::codec`]: a format byte, then postcard), so both stores decode with the same functions.

/// The layout this code reads and writes. A database whose `schema_version` is higher was written by a
/// newer twinhub: connecting to it fails rather than writing rows that newer code would misread.
pub(super) const SCHEMA_VERSION: i32 = 2;

/// Taken (for the transaction) while the tables are created: `CREATE TABLE IF NOT EXISTS` is not safe
/// against itself in two sessions at once, and two nodes may start together.
pub(super) const SCHEMA_LOCK: i64 = 0x0074_7769_6e68_7562; // "twinhub" in ASCII

/// Run in one transaction after [`SCHEMA_LOCK`]; the current search path names where.
///
/// - `hub_seq`: the one global commit sequence. Each commit adds one and writes the new value into every
///   device row it writes, so a node can later read the changes it has not seen (`seq > $last`) in
///   commit order; the index on `devices.seq` is for that feed.
/// - `devices`: `record` NULL is a deleted device's tombstone, kept for the feed; loads skip it.
/// - `c2d_messages`: keyed by device and sequence number, so `d1`'s messages never mix with `d10`'s.
/// - `cluster_files` (version 2): what every node shares besides the state: the policies and the CA
///   (its private key too: whoever can read this database can sign server certificates for the hub).
/// - `commits` (version 2): the commit log every node follows, one row per commit (`crate::cluster`),
///   kept for an hour ([`TRIM_COMMITS`]).
/// - `cluster_identity`: a random id made with the tables, which names the cluster where its other
///   engines keep its state (its telemetry streams in JetStream): a database made anew is a new cluster,
///   even under the same host name. Older code ignores the table, so it needs no new version.
/// - `node_leases` and `held_devices`: presence leases. Each running node renews its lease; it lists the
///   devices and modules it holds (`device_id`: `<device>` or `<device>/<module>`, stamped Connected at
///   `stamp`, nanoseconds). When a lease lapses (its node died or was cut off), another node marks the
///   lapsed node's devices and modules Disconnected where their stamp is still that node's, then forgets
///   the node (`crate::cluster::ClusterStore::lapsed_nodes`). Older code ignores these tables too (and
///   skips the module rows, which name no device id).
pub(super) const CREATE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    id smallint PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_seq (
    id smallint PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO hub_seq (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS devices (
    device_id text PRIMARY KEY,
    seq bigint NOT NULL,
    record bytea
);
CREATE INDEX IF NOT EXISTS devices_seq ON devices (seq);
CREATE TABLE IF NOT EXISTS sessions (
    client_id text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_groups (
    key text PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    key text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    key text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS c2d_messages (
    device_id text,
    sequence_number bigint,
    message bytea NOT NULL,
    PRIMARY KEY (device_id, sequence_number)
);
CREATE TABLE IF NOT EXISTS c2d_feedback (
    sequence_number bigint PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    seq bigint PRIMARY KEY,
    node text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    body bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_files (
    name text PRIMARY KEY,
    content bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_identity (
    id smallint PRIMARY KEY CHECK (id = 1),
    name text NOT NULL
);
INSERT INTO cluster_identity (id, name) VALUES (1, gen_random_uuid()::text) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS node_leases (
    node text PRIMARY KEY,
    renewed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS held_devices (
    node text,
    device_id text,
    stamp bigint NOT NULL,
    PRIMARY KEY (node, device_id)
);
-- Kept out of line without compression: postcard is compact already, and compressing every batch
-- would cost the server more CPU than the bytes it saves.
-- (Altered only when it is not so already: ALTER TABLE takes a lock that would stop every commit.)
DO $$ BEGIN
    IF (SELECT attstorage FROM pg_attribute WHERE attrelid = 'commits'::regclass AND attname = 'body') <> 'e' THEN
        ALTER TABLE commits ALTER COLUMN body SET STORAGE EXTERNAL;
    END IF;
END $$;
";

/// Every this many commits, a node trims the log ([`TRIM_COMMITS`]).
pub(super) const COMMIT_LOG_TRIM_EVERY: u64 = 1024;

/// Records the version a new database was created with; an existing one keeps its own.
pub(super) const INSERT_VERSION: &str =
    "INSERT INTO schema_version (id, version) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
pub(super) const SELECT_VERSION: &str = "SELECT version FROM schema_version WHERE id = 1";
/// Version 1 lacked only `commits`, which [`CREATE_TABLES`] adds.
pub(super) const UPGRADE_VERSION: &str = "UPDATE schema_version SET version = $1 WHERE id = 1 AND version < $1";

/// The first statement of every commit: takes the commit turn (the row lock is held until the
/// transaction ends) and reads the last committed number. See `postgres/commit.rs`.
pub(super) const LOCK_SEQ: &str = "SELECT seq FROM hub_seq WHERE id = 1 FOR UPDATE";
pub(super) const SET_SEQ: &str = "UPDATE hub_seq SET seq = $1 WHERE id = 1";
pub(super) const SELECT_SEQ: &str = "SELECT seq FROM hub_seq WHERE id = 1";
/// The log after a node's last applied commit. Outside a turn a node reads it in pieces.
pub(super) const COMMITS_AFTER: &str = "SELECT seq, body FROM commits WHERE seq > $1 ORDER BY seq";
/// Its limit is `crate::cluster::COMMITS_READ_MAX` (a test below keeps them equal).
pub(super) const COMMITS_AFTER_LIMITED: &str = "SELECT seq, body FROM commits WHERE seq > $1 ORDER BY seq LIMIT 4096";
pub(super) const INSERT_COMMIT: &str = "INSERT INTO commits (seq, node, body) VALUES ($1, $2, $3)";
pub(super) const NOTIFY_COMMIT: &str = "SELECT pg_notify($1, $2)";
/// The log keeps an hour of commits: a node that falls further behind than that (cut off from PostgreSQL
/// that long) finds a gap and must be restarted to load the state afresh.
pub(super) const TRIM_COMMITS: &str = "DELETE FROM commits WHERE committed_at < now() - interval '1 hour'";

// Each write statement takes a whole batch's rows as arrays: one statement per table and kind of write,
// whatever the batch's size. The keys are distinct (`batch::Grouped`): `ON CONFLICT DO UPDATE` may not
// touch a row twice in one statement.
pub(super) const UPSERT_DEVICES: &str = "
INSERT INTO devices (device_id, seq, record)
SELECT u.device_id, $1, u.record FROM unnest($2::text[], $3::bytea[]) AS u(device_id, record)
ON CONFLICT (device_id) DO UPDATE SET seq = EXCLUDED.seq, record = EXCLUDED.record";
pub(super) const UPSERT_SESSIONS: &str = "
INSERT INTO sessions (client_id, record)
SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (client_id) DO UPDATE SET record = EXCLUDED.record";
pub(super) const DELETE_SESSIONS: &str = "DELETE FROM sessions WHERE client_id = ANY($1::text[])";
pub(super) const UPSERT_CONSUMER_GROUPS: &str = "
INSERT INTO consumer_groups (key, name)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name";
pub(super) const DELETE_CONSUMER_GROUPS: &str = "DELETE FROM consumer_groups WHERE key = ANY($1::text[])";
pub(super) const UPSERT_SETTINGS: &str = "
INSERT INTO settings (name, value)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value";
pub(super) const LOAD_SETTINGS: &str = "SELECT name, value FROM settings";
pub(super) const UPSERT_MODULES: &str = "
INSERT INTO modules (key, record)
SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record";
pub(super) const DELETE_MODULES: &str = "DELETE FROM modules WHERE key = ANY($1::text[])";
pub(super) const LOAD_MODULES: &str = "SELECT key, record FROM modules";
/// Jobs under `<job>` and their devices' steps under `<job>/<device>`, in one table as in the embedded
/// store's keyspace.
pub(super) const UPSERT_JOBS: &str = "
INSERT INTO jobs (key, record)
SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record";
pub(super) const LOAD_JOBS: &str = "SELECT key, record FROM jobs";
pub(super) const UPSERT_C2D: &str = "
INSERT INTO c2d_messages (device_id, sequence_number, message)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
ON CONFLICT (device_id, sequence_number) DO UPDATE SET message = EXCLUDED.message";
pub(super) const DELETE_C2D: &str = "
DELETE FROM c2d_messages AS m USING unnest($1::text[], $2::bigint[]) AS d(device_id, sequence_number)
WHERE m.device_id = d.device_id AND m.sequence_number = d.sequence_number";
pub(super) const UPSERT_FEEDBACK: &str = "
INSERT INTO c2d_feedback (sequence_number, record)
SELECT * FROM unnest($1::bigint[], $2::bytea[])
ON CONFLICT (sequence_number) DO UPDATE SET record = EXCLUDED.record";
pub(super) const DELETE_FEEDBACK: &str = "DELETE FROM c2d_feedback WHERE sequence_number = ANY($1::bigint[])";

pub(super) const RENEW_LEASE: &str = "UPDATE node_leases SET renewed_at = now() WHERE node = $1";
pub(super) const TAKE_LEASE: &str = "
INSERT INTO node_leases (node, renewed_at) VALUES ($1, now())
ON CONFLICT (node) DO UPDATE SET renewed_at = now()";
pub(super) const LAPSED_NODES: &str =
    "SELECT node FROM node_leases WHERE renewed_at < now() - make_interval(secs => $1) AND node <> $2";
pub(super) const HELD_BY: &str = "SELECT device_id, stamp FROM held_devices WHERE node = $1";
pub(super) const HOLD_DEVICES: &str = "
INSERT INTO held_devices (node, device_id, stamp)
SELECT $1, h.device_id, h.stamp FROM unnest($2::text[], $3::bigint[]) AS h(device_id, stamp)
ON CONFLICT (node, device_id) DO UPDATE SET stamp = EXCLUDED.stamp";
pub(super) const RELEASE_DEVICES: &str = "
DELETE FROM held_devices AS h USING unnest($2::text[]) AS r(device_id)
WHERE h.node = $1 AND h.device_id = r.device_id";
pub(super) const FORGET_HELD: &str = "DELETE FROM held_devices WHERE node = $1";
pub(super) const FORGET_LEASE: &str = "DELETE FROM node_leases WHERE node = $1";
pub(super) const SELECT_CLUSTER_IDENTITY: &str = "SELECT name FROM cluster_identity WHERE id = 1";
pub(super) const SELECT_CLUSTER_FILES: &str = "SELECT name, content FROM cluster_files ORDER BY name";
/// The first node (or `cluster init`) to offer the files makes them the cluster's; later offers change
/// nothing.
pub(super) const OFFER_CLUSTER_FILES: &str = "
INSERT INTO cluster_files (name, content) SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (name) DO NOTHING";

pub(super) const LOAD_DEVICES: &str = "SELECT device_id, record FROM devices WHERE record IS NOT NULL";
pub(super) const LOAD_SESSIONS: &str = "SELECT client_id, record FROM sessions";
pub(super) const LOAD_SESSION: &str = "SELECT record FROM sessions WHERE client_id = $1";
pub(super) const LOAD_CONSUMER_GROUPS: &str = "SELECT key, name FROM consumer_groups";
pub(super) const LOAD_C2D: &str = "SELECT device_id, sequence_number, message FROM c2d_messages";
pub(super) const LOAD_FEEDBACK: &str = "SELECT sequence_number, record FROM c2d_feedback";

/// `name` as an SQL identifier: in double quotes, with any double quote doubled, so any text names
/// exactly that schema and nothing else.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_quoted_whole() {
        assert_eq!(quote_identifier("hub_a"), "\"hub_a\"");
        assert_eq!(quote_identifier("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(
            quote_identifier("x\"; DROP TABLE devices; --"),
            "\"x\"\"; DROP TABLE devices; --\""
        );
    }

    #[test]
    fn a_read_of_the_log_is_limited_to_what_readers_are_told() {
        assert!(super::COMMITS_AFTER_LIMITED.ends_with(&format!("LIMIT {}", crate::cluster::COMMITS_READ_MAX)));
    }
}
