//! One client message cannot make pgshift hold its size in memory: a simple Query of tens of
//! megabytes streams through to PostgreSQL as it arrives, measured as the real binary's peak RSS.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_queries_stream_instead_of_being_buffered() {
    const SIZE: usize = 48 * 1024 * 1024;
    const CLIENTS: usize = 3;
    let dir = common::TempDir::new("memory-bound");
    let port = common::free_port();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = 4\n[auth]\n[[auth.users]]\nname = \"app\"\n\
             password = \"app\"\n[primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"\"\n",
            common::shared_bed().primary_port
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let pid = running.0.id();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Warm up: logins and a pool connection, so the baseline includes them.
    let mut socks = Vec::new();
    for _ in 0..CLIENTS {
        socks.push(common::raw::login(port, "app", "app", "app").await);
    }
    let before = status_kb(pid, "VmRSS:");

    let sql = format!("select length('{}')", "x".repeat(SIZE));
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    frame.extend_from_slice(sql.as_bytes());
    frame.push(0);
    let frame = std::sync::Arc::new(frame);
    let mut tasks = Vec::new();
    for mut s in socks {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            s.write_all(&frame).await.unwrap();
            common::raw::read_frames(&mut s, b'Z').await
        }));
    }
    for t in tasks {
        let frames = t.await.unwrap();
        let (_, row) = frames.iter().find(|(t, _)| *t == b'D').expect("a row");
        assert!(String::from_utf8_lossy(row).contains(&SIZE.to_string()), "wrong result");
    }
    let peak = status_kb(pid, "VmHWM:");
    let growth_mb = peak.saturating_sub(before) / 1024;
    // Buffered, the three statements would need at least 3 x 48 MB (twice that, as they were
    // copied once more toward the server); streamed, a few buffers per client.
    eprintln!("peak RSS growth {growth_mb} MB");
    assert!(growth_mb < 48, "peak RSS grew by {growth_mb} MB for {CLIENTS} x 48 MB queries");
}
