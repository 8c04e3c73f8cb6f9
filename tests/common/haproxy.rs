//! HAProxy (Debian's package, TCP mode, round robin, health checks on each instance's admin
//! port), started by a test in front of several pgshift instances.

use std::time::Duration;
use tokio::net::TcpStream;

/// One instance behind HAProxy: its client address and its admin port.
pub type Backend = (String, u16);

/// An in-process proxy as a backend.
pub fn backend(p: &pgshift::proxy::Proxy) -> Backend {
    let admin = p.admin_addr.clone().expect("admin port");
    (p.addr.to_string(), admin.rsplit(':').next().unwrap().parse().unwrap())
}

/// A running HAProxy; stopped on drop.
pub struct HaProxy {
    child: std::process::Child,
    /// Where clients connect.
    pub port: u16,
    _dir: super::TempDir,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HaProxy {
    /// Starts HAProxy in front of `backends` (`GET /health` every second; a failed connect is
    /// retried on another instance); `None` (with the reason printed) if it is not installed.
    pub async fn start(backends: &[Backend]) -> Option<HaProxy> {
        if std::process::Command::new("haproxy").arg("-v").output().is_err() {
            eprintln!("skipped: haproxy not found (scripts/test.sh installs it with apt-get)");
            return None;
        }
        let dir = super::TempDir::new("fleet-haproxy");
        let port = super::free_port();
        let mut cfg = format!(
            "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  \
             timeout server 120s\n  retries 3\n  option redispatch\nfrontend pg\n  bind 127.0.0.1:{port}\n  \
             default_backend pgshift\nbackend pgshift\n  balance roundrobin\n  option httpchk\n  \
             http-check send meth GET uri /health\n  http-check expect status 200\n"
        );
        for (i, (addr, admin_port)) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server s{i} {addr} check port {admin_port} inter 1s fall 2 rise 1\n"));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let h = HaProxy { child, port, _dir: dir };
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(h)
    }
}
