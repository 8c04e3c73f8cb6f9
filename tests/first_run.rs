//! The first hour with pgshift: `--check-config` finds everything start would (missing TLS files,
//! auth_file, every mistake of a section, in plain words), and the log is usable as operators
//! collect it (no colour codes when it is not a terminal; JSON lines on request; a startup
//! summary of listeners, TLS and pools).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgshift")
}

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(bin()).args(["--check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_reports_missing_files_and_every_mistake() {
    let dir = common::TempDir::new("first-run");
    let missing = dir.join("missing");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\n[auth]\nauth_file = \"{m}/userlist.txt\"\n\
             [tls]\nmode = \"require\"\ncert = \"{m}/server.crt\"\nkey = \"{m}/server.key\"\nclient_ca = \"{m}/ca.crt\"\n\
             [primary]\nhost = \"127.0.0.1\"\n",
            m = missing.display()
        ),
    )
    .unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, 2, "{err}");
    for file in ["userlist.txt", "server.crt", "server.key", "ca.crt"] {
        assert!(err.contains(&format!("{}/{file}", missing.display())), "{file} not reported:\n{err}");
    }

    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:6432\"\npool_mode = \"transacton\"\ndefault_pool_size = -5\n\
         max_client_con = 10\n[primary]\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, 2, "{err}");
    for want in [
        "pool_mode = \"transacton\": must be one of transaction, session (did you mean \"transaction\"?)",
        "default_pool_size = -5: must be a whole number, 0 or more",
        "unknown key `proxy.max_client_con` (did you mean `max_client_conn`?)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("usize"), "{err}");
}

/// Starts the binary with `env`, reads its log until the startup summary is complete, stops it.
fn startup_log(dir: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let bed = common::shared_bed();
    let path = dir.join("log.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
             [primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"\"\n\
             [databases.app]\npool_size = 7\n[databases.reports]\ndbname = \"app\"\n",
            bed.primary_port
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args(["--config", path.to_str().unwrap()])
        .env_remove("PGSHIFT_LOG_FORMAT")
        .env_remove("PGSHIFT_LOG")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    while Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.contains("other database names are refused") || line.contains("database *");
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_are_plain_or_json_and_start_with_a_summary() {
    let dir = common::TempDir::new("first-run-log");
    let text = startup_log(&dir, &[]);
    let all = text.join("\n");
    assert!(!all.contains('\u{1b}'), "colour codes in a log that is not a terminal:\n{all}");
    for want in ["pgshift listening", "effective settings", "client_tls=disable", "cluster=default", "database=app"] {
        assert!(all.contains(want), "{want:?} missing from the startup log:\n{all}");
    }
    assert!(all.contains("database=reports") && all.contains("server_database=app"), "{all}");
    assert!(all.contains("pool_size=7"), "{all}");

    let json = startup_log(&dir, &[("PGSHIFT_LOG_FORMAT", "json")]);
    assert!(json.len() >= 4, "{json:?}");
    for line in &json {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    assert!(json.iter().any(|l| l.contains("\"message\":\"effective settings\"")), "{json:?}");
}
