//! HAProxy in TCP mode in front of a cluster's nodes, as docs/cluster.md configures it: Debian's
//! package (`.ci/run` installs it). The configuration is docs/haproxy.cfg with the addresses filled in.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Balancer {
    pub address: Ipv4Addr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The documented configuration, for a balancer on `address` and nodes at `nodes`.
pub fn configuration(address: Ipv4Addr, nodes: &[Ipv4Addr]) -> String {
    let template = std::fs::read_to_string(super::workspace_root().join("docs/haproxy.cfg")).expect("docs/haproxy.cfg");
    let servers = |port: u16| -> String {
        nodes
            .iter()
            .enumerate()
            .map(|(n, node)| format!("    server node{n} {node}:{port} check\n"))
            .collect()
    };
    template
        .replace("BALANCER_ADDRESS", &address.to_string())
        .replace(
            "    server node1 10.0.0.11:443 check\n    server node2 10.0.0.12:443 check\n",
            &servers(443),
        )
        .replace(
            "    server node1 10.0.0.11:8883 check\n    server node2 10.0.0.12:8883 check\n",
            &servers(8883),
        )
        .replace(
            "    server node1 10.0.0.11:5671 check\n    server node2 10.0.0.12:5671 check\n",
            &servers(5671),
        )
}

impl Balancer {
    /// `None` when HAProxy is not installed (outside CI).
    pub fn start(address: Ipv4Addr, nodes: &[Ipv4Addr]) -> Option<Balancer> {
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, configuration(address, nodes)).expect("write the configuration");
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((address, 443)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen on {address}:443");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Balancer {
            address,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
