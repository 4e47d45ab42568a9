//! A PostgreSQL server of a test's own (Debian's binaries, run as the `postgres` user through `runuser`),
//! on a free port of 127.0.0.1 with its data in a temporary directory, so that the test can crash it
//! (an immediate shutdown: no checkpoint, WAL recovery at the next start) and start it again without
//! disturbing the server other tests share. Skipped (None) when the binaries or root are missing, unless
//! `TWINHUB_REQUIRE_POSTGRES=1` (CI).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
}

fn skip(reason: &str) -> Option<PrivatePostgres> {
    assert!(
        std::env::var("TWINHUB_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "a private PostgreSQL is required (TWINHUB_REQUIRE_POSTGRES=1) but {reason}"
    );
    eprintln!("skipped: {reason}");
    None
}

/// `runuser -u postgres -- <program> <args>`.
fn as_postgres(program: &std::path::Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

impl PrivatePostgres {
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().join("bin"))
                    .max()
            })
            .filter(|bin| bin.join("initdb").exists())
        else {
            return skip("Debian's PostgreSQL binaries are not installed");
        };
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        if !is_root {
            return skip("running PostgreSQL as its own user needs root");
        }
        let dir = tempfile::tempdir().expect("a directory for PostgreSQL");
        let chowned = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        assert!(chowned, "chown the PostgreSQL directory");
        let initdb = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(initdb.success(), "initdb failed");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut postgres = PrivatePostgres {
            bin,
            dir,
            port,
            server: None,
        };
        postgres.resume();
        Some(postgres)
    }

    /// The `--store` value for database `postgres` of this server.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.port
        )
    }

    /// Starts the server (again, after a crash: it recovers from its WAL) and waits until it answers.
    pub fn resume(&mut self) {
        let server = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|status| status.success());
            if ready && TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not come up on {address}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Crashes the server: an immediate shutdown (SIGQUIT to the postmaster), as a power cut looks to
    /// PostgreSQL: no checkpoint, every session cut; what was committed is in the WAL.
    pub fn crash(&mut self) {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
        {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_file.exists() {
            assert!(Instant::now() < deadline, "PostgreSQL did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.crash();
    }
}
