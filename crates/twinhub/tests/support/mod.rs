//! The integration-test harness: a real `twinhub serve` process per test, each on its own loopback
//! address (anything in 127.0.0.0/8) so that every hub can use the standard ports the SDKs hard-code,
//! and tests run in parallel. Also installs and runs the official Node.js and Python SDKs.
#![allow(dead_code)]

pub mod balancer;
pub mod cut_proxy;
pub mod database;
pub mod nats;
pub mod private_postgres;
pub mod webhook;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const HTTPS_PORT: u16 = 443;
pub const MQTT_PORT: u16 = 8883;
pub const AMQP_PORT: u16 = 5671;

pub struct TestHub {
    address: Ipv4Addr,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
    /// RUST_LOG for the hub; default: the test's own RUST_LOG, else `info`.
    log_filter: Option<String>,
    /// Extra `serve` flags, given again at every restart.
    extra_args: Vec<String>,
    /// The name devices and back ends use, when not the hub's own address (a cluster's nodes share one).
    hostname: Option<String>,
}

impl TestHub {
    /// Starts a hub with a fresh data directory on a loopback address no other hub of this machine uses.
    pub fn start() -> TestHub {
        TestHub::start_with(&[])
    }

    /// Same, with the hub's RUST_LOG filter set (to assert on what it logs).
    pub fn start_with_log(filter: &str) -> TestHub {
        TestHub::launch(&[], Some(filter.to_owned()))
    }

    /// Same, with extra `serve` flags (e.g. `--allow-arrays`).
    pub fn start_with(extra_args: &[&str]) -> TestHub {
        TestHub::launch(extra_args, None)
    }

    fn launch(extra_args: &[&str], log_filter: Option<String>) -> TestHub {
        let mut hub = TestHub {
            address: free_loopback_address(),
            data_dir: tempfile::tempdir().expect("temporary data directory"),
            child: None,
            log_filter,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            hostname: None,
        };
        hub.spawn();
        hub
    }

    /// A hub on its own address that devices and back ends know as `hostname` (a load balancer's).
    pub fn start_named(hostname: &str, extra_args: &[&str]) -> TestHub {
        let mut hub = TestHub {
            address: free_loopback_address(),
            data_dir: tempfile::tempdir().expect("temporary data directory"),
            child: None,
            log_filter: None,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            hostname: Some(hostname.to_owned()),
        };
        hub.spawn();
        hub
    }

    /// Another node of `peer`'s cluster, on its own address with its own data directory, under the same
    /// host name; `extra_args` name the shared store, from which it takes the cluster's policies and CA.
    pub fn start_node_of(peer: &TestHub, extra_args: &[&str]) -> TestHub {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut hub = TestHub {
            address: free_loopback_address(),
            data_dir,
            child: None,
            log_filter: None,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            hostname: Some(peer.host()),
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.path().join("hub.log"))
            .expect("hub log");
        let child = Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--hostname", &self.host(), "--bind", &self.address.to_string()])
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                self.log_filter
                    .clone()
                    .unwrap_or_else(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
            )
            .stdout(log.try_clone().expect("hub log"))
            .stderr(log)
            .spawn()
            .expect("start twinhub serve");
        self.child = Some(child);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = SocketAddr::from((self.address, HTTPS_PORT));
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the hub exited with {status} before listening:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not listen on {target} within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the hub printed so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("hub.log")).unwrap_or_default()
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The host name devices and back ends use: the hub's own loopback address (it is in the certificate).
    pub fn host(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| self.address.to_string())
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// A policy's connection string, read the way scripts read it: the last line of `twinhub connection-string`.
    pub fn connection_string(&self, policy: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .arg("connection-string")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--policy", policy])
            .output()
            .expect("run twinhub connection-string");
        assert!(
            output.status.success(),
            "connection-string failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        last_line(&output.stdout)
    }

    pub fn owner_connection_string(&self) -> String {
        self.connection_string("iothubowner")
    }

    /// Runs `twinhub <args> --data-dir <this hub's>` (a CLI command against this hub) and fails unless it
    /// succeeds; returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .output()
            .expect("run twinhub");
        assert!(
            output.status.success(),
            "twinhub {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The Event Hubs-compatible endpoint's connection string (`service` policy), as
    /// `twinhub connection-string --event-hubs` prints it.
    pub fn event_hubs_connection_string(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .arg("connection-string")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--event-hubs")
            .output()
            .expect("run twinhub connection-string --event-hubs");
        assert!(
            output.status.success(),
            "connection-string --event-hubs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        last_line(&output.stdout)
    }

    /// The CA certificate (PEM) clients must trust, from `twinhub ca-cert`.
    pub fn ca_path(&self) -> PathBuf {
        let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
            .arg("ca-cert")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .output()
            .expect("run twinhub ca-cert");
        assert!(
            output.status.success(),
            "ca-cert failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(last_line(&output.stdout))
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    /// The hub process's id, for a script that kills it at a moment of its own choosing.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the hub again on the same address, data directory and flags.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// 127.X.Y.Z with X from the process id (test binaries run one after another, tests in one binary in
/// parallel) and Y.Z from a counter; an address whose HTTPS port is taken is skipped.
pub fn free_loopback_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20 + (std::process::id() % 200) as u8;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let address = Ipv4Addr::new(127, base, (n / 250) as u8, (n % 250 + 1) as u8);
        let free = [HTTPS_PORT, MQTT_PORT, AMQP_PORT]
            .iter()
            .all(|port| TcpListener::bind((address, *port)).is_ok());
        if free {
            return address;
        }
        assert!(n < 60_000, "no free loopback address");
    }
}

// ---------------------------------------------------------------------------------------------------
// The official SDKs

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// SDK tests run unless a developer opts out locally; CI (`CI=true`) always runs them.
pub fn sdk_tests_enabled() -> bool {
    let skip = std::env::var("TWINHUB_SKIP_SDK_TESTS").is_ok_and(|v| v == "1");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if skip && ci {
        panic!("TWINHUB_SKIP_SDK_TESTS=1 is not allowed in CI");
    }
    !skip
}

fn run_checked(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: could not start: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `npm ci` from the committed lock file, once per lock file content.
pub fn ensure_node_sdk() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = workspace_root().join("sdk-tests/node");
            let lock = std::fs::read(dir.join("package-lock.json")).expect("sdk-tests/node/package-lock.json");
            let stamp = dir.join("node_modules/.twinhub-lock-stamp");
            let want = format!("{:x}", fingerprint(&lock));
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
                run_checked(
                    Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                        .current_dir(&dir),
                    "npm ci in sdk-tests/node",
                );
                std::fs::write(&stamp, &want).expect("write npm stamp");
            }
            dir
        })
        .clone()
}

/// A venv with the pinned Python SDKs, rebuilt when requirements.txt changes.
pub fn ensure_python_sdk() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = workspace_root().join("sdk-tests/python");
            let requirements = std::fs::read(dir.join("requirements.txt")).expect("sdk-tests/python/requirements.txt");
            let venv = dir.join(".venv");
            let stamp = venv.join("twinhub-requirements-stamp");
            let want = format!("{:x}", fingerprint(&requirements));
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
                let _ = std::fs::remove_dir_all(&venv);
                run_checked(
                    Command::new("python3").args(["-m", "venv"]).arg(&venv),
                    "python3 -m venv",
                );
                run_checked(
                    Command::new(venv.join("bin/pip"))
                        .args([
                            "install",
                            "--quiet",
                            "--disable-pip-version-check",
                            "-r",
                            "requirements.txt",
                        ])
                        .current_dir(&dir),
                    "pip install -r sdk-tests/python/requirements.txt",
                );
                std::fs::write(&stamp, &want).expect("write pip stamp");
            }
            dir
        })
        .clone()
}

/// FNV-1a: enough to notice that a lock file changed.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

/// The environment every SDK script gets: the hub's owner and Event Hubs connection strings, a device-less
/// hub host, and trust in the hub's CA.
fn sdk_command(program: PathBuf, dir: &Path, script: &str, hub: &TestHub, env: &[(&str, String)]) -> Command {
    let ca = hub.ca_path();
    let mut command = Command::new(program);
    command
        .arg(script)
        .current_dir(dir)
        .env("TWINHUB_CONNECTION_STRING", hub.owner_connection_string())
        .env(
            "TWINHUB_EVENTHUBS_CONNECTION_STRING",
            hub.event_hubs_connection_string(),
        )
        .env("TWINHUB_HOST", hub.host())
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("SSL_CERT_FILE", &ca)
        .env("TWINHUB_CA", &ca)
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `sdk-tests/node/<script>` and fails the test with its output unless it exits 0.
pub fn run_node(script: &str, hub: &TestHub, env: &[(&str, String)]) -> Output {
    let dir = ensure_node_sdk();
    finish(sdk_command("node".into(), &dir, script, hub, env), script, hub)
}

/// Runs one SDK script against a hub of its own, printing what it logged.
pub fn sdk_script(language: &str, script: &str, env: &[(&str, String)]) {
    sdk_script_with(&[], language, script, env);
}

/// As `sdk_script`, the hub started with `hub_args`.
pub fn sdk_script_with(hub_args: &[&str], language: &str, script: &str, env: &[(&str, String)]) {
    if !sdk_tests_enabled() {
        println!("{script}: skipped (TWINHUB_SKIP_SDK_TESTS=1)");
        return;
    }
    let hub = TestHub::start_with(hub_args);
    let output = match language {
        "node" => run_node(script, &hub, env),
        _ => run_python(script, &hub, env),
    };
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

/// Runs `sdk-tests/python/<script>` in the venv and fails the test with its output unless it exits 0.
pub fn run_python(script: &str, hub: &TestHub, env: &[(&str, String)]) -> Output {
    let dir = ensure_python_sdk();
    finish(
        sdk_command(dir.join(".venv/bin/python"), &dir, script, hub, env),
        script,
        hub,
    )
}

fn finish(mut command: Command, script: &str, hub: &TestHub) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{script}: could not start: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- hub log\n{}",
        output.status,
        hub.log()
    );
    output
}
