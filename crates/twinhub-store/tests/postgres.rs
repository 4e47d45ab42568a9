//! What only the PostgreSQL store promises beyond the `Store` contract (contract.rs): the commit
//! sequence and tombstones a change feed will read, the schema version, errors on corrupt rows, commits
//! from several connections, and a connection opened again after it broke.
//!
//! Needs a server: see `support/mod.rs` (`TWINHUB_TEST_POSTGRES_URL`, `TWINHUB_REQUIRE_POSTGRES`).

mod support;

use support::{id, load_sorted, record, session, upsert, Harness, PostgresHarness};
use twinhub_store::{PostgresStore, Store, StoreError, StoreWrite};

async fn hub_seq(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT seq FROM hub_seq", &[])
        .await
        .expect("hub_seq")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_takes_the_next_seq_and_a_delete_leaves_a_tombstone() {
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let store = harness.open().await;
    let client = harness.client().await;
    assert_eq!(hub_seq(&client).await, 0);
    let (a, b, c) = (record("a", 1), record("b", 2), record("c", 3));
    store.commit(vec![upsert(&a), upsert(&b)]).await.expect("commit 1");
    store
        .commit(vec![StoreWrite::Delete(id("a")), upsert(&c)])
        .await
        .expect("commit 2");
    // A commit without device rows still takes a number; an empty one does not.
    store
        .commit(vec![StoreWrite::UpsertSession(session("c", &[]))])
        .await
        .expect("commit 3");
    store.commit(Vec::new()).await.expect("empty commit");
    assert_eq!(hub_seq(&client).await, 3);

    let rows: Vec<(String, i64, Option<Vec<u8>>)> = client
        .query("SELECT device_id, seq, record FROM devices ORDER BY device_id", &[])
        .await
        .expect("devices")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let encoded = |record| Some(twinhub_store::codec::encode(record).expect("encode"));
    assert_eq!(
        rows,
        vec![
            ("a".to_owned(), 2, None),
            ("b".to_owned(), 1, encoded(&b)),
            ("c".to_owned(), 2, encoded(&c)),
        ]
    );
    assert_eq!(load_sorted(&*store).await, vec![b, c]);
    // Changes since seq 1, in seq order: what a node tailing the feed will read.
    let since: Vec<String> = client
        .query(
            "SELECT device_id FROM devices WHERE seq > 1 ORDER BY seq, device_id",
            &[],
        )
        .await
        .expect("feed")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(since, vec!["a".to_owned(), "c".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_again_keeps_the_tables_and_a_newer_schema_is_refused() {
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let device = record("kept", 1);
    harness
        .open()
        .await
        .commit(vec![upsert(&device)])
        .await
        .expect("commit");
    let store = harness.open().await;
    assert_eq!(load_sorted(&*store).await, vec![device]);
    let client = harness.client().await;
    let version: i32 = client
        .query_one("SELECT version FROM schema_version", &[])
        .await
        .expect("schema_version")
        .get(0);
    assert_eq!(version, 2);

    client
        .batch_execute("UPDATE schema_version SET version = 3")
        .await
        .expect("a newer version");
    // The password (trust authentication ignores it) must not appear in the error.
    let url = format!("{} password=not-to-be-shown", harness.url);
    let url = if harness.url.contains("://") {
        harness.url.clone()
    } else {
        url
    };
    match PostgresStore::connect_in_schema(&url, &harness.schema).await {
        Err(StoreError::Open { path, source }) => {
            let text = format!("{path}: {source}");
            assert!(text.contains("schema version 3"), "{text}");
            assert!(text.contains(&harness.schema), "{text}");
            assert!(!text.contains("not-to-be-shown"), "{text}");
        }
        other => panic!("expected an Open error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_errors_naming_their_key_not_panics() {
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let store = harness.open().await;
    let client = harness.client().await;
    let moved = twinhub_store::codec::encode(&record("elsewhere", 1)).expect("encode");
    let cases: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("future-format", &[9, 1, 2, 3]),
        ("truncated", &[twinhub_store::codec::FORMAT_V1, 0x05, b'a']),
        ("misplaced", &moved),
    ];
    for (key, value) in cases {
        client
            .execute("INSERT INTO devices VALUES ($1, 1, $2)", &[&key, &value])
            .await
            .expect("raw insert");
        match store.load_all().await {
            Err(StoreError::Corrupt { key: reported, .. }) => assert_eq!(reported, key),
            other => panic!("{key}: expected Corrupt, got {:?}", other.map(|r| r.len())),
        }
        client
            .execute("DELETE FROM devices WHERE device_id = $1", &[&key])
            .await
            .expect("raw delete");
    }
    let negative: i64 = -1;
    client
        .execute(
            "INSERT INTO c2d_feedback VALUES ($1, $2)",
            &[&negative, &vec![twinhub_store::codec::FORMAT_V1]],
        )
        .await
        .expect("raw insert");
    assert!(matches!(store.load_feedback().await, Err(StoreError::Corrupt { .. })));
    client
        .execute(
            "INSERT INTO sessions VALUES ('s1', $1)",
            &[&vec![twinhub_store::codec::FORMAT_V1, 0xff]],
        )
        .await
        .expect("raw insert");
    assert!(matches!(store.load_sessions().await, Err(StoreError::Corrupt { key, .. }) if key == "session s1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_two_connections_take_distinct_seqs() {
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let stores = [harness.open().await, harness.open().await];
    let commits = 50;
    let runs = stores.iter().enumerate().map(|(node, store)| async move {
        for n in 0..commits {
            let device = record(&format!("node{node}-{n:02}"), n);
            store.commit(vec![upsert(&device)]).await.expect("commit");
        }
    });
    futures_util::future::join_all(runs).await;
    let client = harness.client().await;
    assert_eq!(hub_seq(&client).await, 2 * commits);
    let seqs: Vec<i64> = client
        .query("SELECT seq FROM devices ORDER BY seq", &[])
        .await
        .expect("devices")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(seqs, (1..=2 * commits).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_is_opened_again_by_the_next_call() {
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let application = harness.schema.clone();
    let url = if harness.url.contains("://") {
        let separator = if harness.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}application_name={application}", harness.url)
    } else {
        format!("{} application_name={application}", harness.url)
    };
    let store = PostgresStore::connect_in_schema(&url, &harness.schema)
        .await
        .expect("connect");
    let first = record("before", 1);
    store.commit(vec![upsert(&first)]).await.expect("commit");
    let client = harness.client().await;
    let ended: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(ended, 1);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The call that finds the connection broken may fail; the one after it works.
    let second = record("after", 2);
    if store.commit(vec![upsert(&second)]).await.is_err() {
        store
            .commit(vec![upsert(&second)])
            .await
            .expect("commit on a new connection");
    }
    assert_eq!(load_sorted(&store).await, vec![second, first]);
}

async fn node(harness: &PostgresHarness, name: &str) -> PostgresStore {
    PostgresStore::connect_in_schema(&harness.url, &harness.schema)
        .await
        .expect("the PostgreSQL store connects")
        .with_node_name(name)
}

/// The `n` tag of a record written by `counted`.
fn count_of(writes: &[StoreWrite]) -> Option<i64> {
    writes.iter().rev().find_map(|write| match write {
        StoreWrite::Upsert(record) => match record.twin.tags.get("n") {
            Some(twinhub_core::Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_sees_every_other_nodes_commit_so_concurrent_counters_never_lose_an_update() {
    use twinhub_store::ClusterStore;
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let (a, b) = (node(&harness, "a").await, node(&harness, "b").await);
    const TURNS: i64 = 40;
    // Each node keeps its own idea of the counter from what its turns show it, and writes counter + 1:
    // only if every turn sees every commit before it do the counts come out 1..=2*TURNS, each once.
    let count_on = |store: PostgresStore| async move {
        let (mut applied, mut counter, mut written) = (0u64, 0i64, Vec::new());
        for _ in 0..TURNS {
            let mut mine = 0;
            applied = store
                .commit_in_turn(
                    applied,
                    Box::new(|others| {
                        for commit in &others {
                            counter = count_of(&commit.writes).unwrap_or(counter);
                        }
                        counter += 1;
                        mine = counter;
                        (vec![upsert(&record("counter", counter))], Vec::new())
                    }),
                )
                .await
                .expect("commit in turn");
            written.push(mine);
        }
        (written, store)
    };
    let ((mut from_a, a), (from_b, b)) = tokio::join!(count_on(a), count_on(b));
    from_a.extend(from_b);
    from_a.sort_unstable();
    assert_eq!(from_a, (1..=2 * TURNS).collect::<Vec<_>>());
    assert_eq!(a.committed_seq().await.expect("seq"), 2 * TURNS as u64);

    // The log read outside a turn, from any point, in order; the consistent load names its seq.
    let log = b.commits_after(2 * TURNS as u64 - 3).await.expect("log");
    let seqs: Vec<u64> = log.iter().map(|commit| commit.seq).collect();
    assert_eq!(seqs, [78, 79, 80]);
    assert_eq!(count_of(&log[2].writes), Some(2 * TURNS));
    let loaded = b.load().await.expect("load");
    assert_eq!(loaded.seq, 2 * TURNS as u64);
    let loaded_counts: Vec<Option<i64>> = loaded
        .records
        .into_iter()
        .map(|record| count_of(&[upsert(&record)]))
        .collect();
    assert_eq!(loaded_counts, [Some(2 * TURNS)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_hear_of_a_commit_and_a_trimmed_log_is_an_error_not_a_silent_gap() {
    use twinhub_store::ClusterStore;
    let Some(harness) = PostgresHarness::start().await else {
        return;
    };
    let (a, b) = (node(&harness, "a").await, node(&harness, "b").await);
    let mut heard = b.commit_notifications();
    // The listener is up once it has polled once; then a commit is heard.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.commit(vec![upsert(&record("x", 1))]).await.expect("commit");
    tokio::time::timeout(std::time::Duration::from_secs(5), heard.wait_for(|seq| *seq >= 1))
        .await
        .expect("heard within 5 s")
        .expect("listener alive");

    a.commit(vec![upsert(&record("x", 2))]).await.expect("commit");
    harness
        .client()
        .await
        .batch_execute("DELETE FROM commits WHERE seq = 1")
        .await
        .expect("trim");
    let error = b.commits_after(0).await.expect_err("a gap");
    assert!(error.to_string().contains("no longer holds commit 1"), "{error}");
    let error = b
        .commit_in_turn(0, Box::new(|_| (Vec::new(), Vec::new())))
        .await
        .expect_err("a gap");
    assert!(error.to_string().contains("restart it"), "{error}");
    assert_eq!(b.commits_after(1).await.expect("after the gap").len(), 1);
}
