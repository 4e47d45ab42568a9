//! A PostgreSQL database of a test's own, for hubs on the PostgreSQL store: `TWINHUB_TEST_POSTGRES_URL`
//! (default `host=127.0.0.1 user=postgres dbname=test`) names the server. Skipped (None) when PostgreSQL
//! cannot be reached, unless `TWINHUB_REQUIRE_POSTGRES=1` (CI sets it).

fn admin_url() -> String {
    std::env::var("TWINHUB_TEST_POSTGRES_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A database of the test's own, dropped when this goes.
pub struct Database {
    name: String,
    admin: tokio_postgres::Client,
}

impl Database {
    pub async fn create() -> Option<Database> {
        let admin = match tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
            }
            Err(error) => {
                assert!(
                    std::env::var("TWINHUB_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "PostgreSQL is required (TWINHUB_REQUIRE_POSTGRES=1) but unreachable: {error}"
                );
                eprintln!(
                    "postgres_node: skipped, PostgreSQL unreachable at {}: {error}",
                    admin_url()
                );
                return None;
            }
        };
        let name = format!(
            "twinhub_node_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        Some(Database { name, admin })
    }

    /// The `--store` value: the admin URL's server and user, this database.
    pub fn store_url(&self) -> String {
        let (host, port, user) = self.server();
        format!("host={host} port={port} user={user} dbname={}", self.name)
    }

    /// The server's address, for a proxy in front of it.
    pub fn server_address(&self) -> std::net::SocketAddr {
        let (host, port, _) = self.server();
        let ip: std::net::IpAddr = host.parse().expect("PostgreSQL at an IP address for this test");
        std::net::SocketAddr::new(ip, port)
    }

    /// The `--store` value reaching this database through `proxy` (on 127.0.0.1).
    pub fn store_url_via(&self, proxy: std::net::SocketAddr) -> String {
        let (_, _, user) = self.server();
        format!(
            "host={} port={} user={user} dbname={} connect_timeout=2",
            proxy.ip(),
            proxy.port(),
            self.name
        )
    }

    fn server(&self) -> (String, u16, String) {
        let admin = admin_url();
        let config: tokio_postgres::Config = admin.parse().expect("a valid PostgreSQL URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        (host, port, user)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let (client, connection) = tokio_postgres::connect(&self.store_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Drops the database, and the telemetry streams in NATS of the cluster it held (nodes started with
    /// `--bus` made them, named by the database's cluster identity).
    pub async fn drop_now(self) {
        if let Ok((client, connection)) = tokio_postgres::connect(&self.store_url(), tokio_postgres::NoTls).await {
            tokio::spawn(connection);
            if let Ok(row) = client.query_one("SELECT name FROM cluster_identity", &[]).await {
                let nats = std::env::var("TWINHUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
                let _ = twinhub_store::JetStreamEvents::remove(&nats, &row.get::<_, String>(0)).await;
            }
        }
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = self.admin.batch_execute(&statement).await;
    }
}
