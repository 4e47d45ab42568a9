//! A NATS server (with JetStream) of a test's own, on a free port of 127.0.0.1 with its own store
//! directory, so that the test can kill it and start it again without disturbing other tests' bus.
//! `nats-server` from the machine (`.ci/run` installs Debian's); skipped (None) when it is missing,
//! unless `TWINHUB_REQUIRE_POSTGRES=1` (CI), as the cluster tests are.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateNats {
    binary: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    pub fn start() -> Option<PrivateNats> {
        let binary = ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|candidate| Command::new(candidate).arg("--version").output().is_ok());
        let Some(binary) = binary else {
            assert!(
                std::env::var("TWINHUB_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "nats-server is required (TWINHUB_REQUIRE_POSTGRES=1) but not installed"
            );
            eprintln!("skipped: nats-server is not installed");
            return None;
        };
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut nats = PrivateNats {
            binary: binary.to_owned(),
            port,
            dir: tempfile::tempdir().expect("a directory for JetStream"),
            child: None,
        };
        nats.resume();
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL): what a crash or a cut looks like to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory, and waits until it listens.
    pub fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
