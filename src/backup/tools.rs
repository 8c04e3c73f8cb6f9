//! pg_dump and pg_restore: finding them, checking at start that a backup could run, and running
//! one with a bound (killed past it, or when pgshift stops).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, Command};
use tokio::sync::watch;

use super::BackupError;
use crate::auth::Users;
use crate::config::{BackupConfig, Config, PG_BIN_FALLBACK};

/// How much of a tool's standard error is kept for the error message (its end).
const STDERR_TAIL: usize = 4096;

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on PATH, else in [`PG_BIN_FALLBACK`].
fn find(name: &str) -> Option<PathBuf> {
    find_in(name, &std::env::var_os("PATH").unwrap_or_default())
}

/// `name` in a directory of `path` (PATH's syntax), else in [`PG_BIN_FALLBACK`]. Entries that
/// are not absolute ("", ".", "bin") are skipped: they name a directory under wherever pgshift
/// was started, which may be one others can write to.
fn find_in(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .chain(std::iter::once(PathBuf::from(PG_BIN_FALLBACK)))
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The pg_dump to run: as configured, else found.
pub fn pg_dump(cfg: &BackupConfig) -> Option<PathBuf> {
    match cfg.pg_dump.as_str() {
        "" => find("pg_dump"),
        p => Some(PathBuf::from(p)),
    }
}

/// The pg_restore to run: as configured, else the one beside a configured pg_dump (the same
/// version), else found.
pub fn pg_restore(cfg: &BackupConfig) -> Option<PathBuf> {
    if !cfg.pg_restore.is_empty() {
        return Some(PathBuf::from(&cfg.pg_restore));
    }
    let beside = (!cfg.pg_dump.is_empty())
        .then(|| Path::new(&cfg.pg_dump).with_file_name("pg_restore"))
        .filter(|p| executable(p));
    beside.or_else(|| find("pg_restore"))
}

/// What start (and `--check-config`, and a reload) checks beyond the config text: `dir` is a
/// directory, both tools can be run, and pg_dump can log in with what pgshift holds.
pub fn check(config: &Config, users: &Users, problems: &mut Vec<String>) {
    let Some(b) = &config.backup else { return };
    problems.extend(dir_problem(&b.dir));
    for (key, found) in [("pg_dump", pg_dump(b)), ("pg_restore", pg_restore(b))] {
        match found {
            Some(p) if executable(&p) => {}
            Some(p) => problems.push(format!("[backup] {key} {} is not an executable file", p.display())),
            None => problems.push(format!(
                "[backup] {key} is not on PATH nor in {PG_BIN_FALLBACK}: install the PostgreSQL client \
                 (the container image has none) or set {key}"
            )),
        }
    }
    if let Some(u) = users.get(&b.user) {
        if u.plaintext.is_none() && (u.scram.is_some() || u.md5.is_some()) {
            problems.push(format!(
                "[backup] user {:?}: pg_dump needs the password itself (password or password_file), \
                 not a SCRAM verifier or md5 hash",
                b.user
            ));
        }
    }
}

/// Why `dir` cannot hold backups, if it cannot: not a directory, or one where another user could
/// rename a database's directory and put one of their own in its place (between pgshift's check
/// of it and pg_dump writing there, or before an operator restores from it). Writable by group or
/// others is fine only with the sticky bit (as /tmp), and the owner must be pgshift's user or root.
fn dir_problem(dir: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if !dir.is_empty() => return Some(format!("[backup] cannot use dir {dir}: {e}")),
        Err(_) => return None, // reported by validate
    };
    let me = rustix::process::geteuid().as_raw();
    if !m.is_dir() {
        Some(format!("[backup] dir {dir} is not a directory"))
    } else if m.uid() != me && m.uid() != 0 {
        Some(format!("[backup] dir {dir} is owned by uid {}, not by pgshift's user (uid {me}) or root", m.uid()))
    } else if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
        Some(format!(
            "[backup] dir {dir} is writable by other users (mode {:o}) without the sticky bit: they could swap a \
             database's directory for their own; chmod go-w it",
            m.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// How a run ended, decided before the child is touched again.
enum End {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Stopped,
}

/// Runs `cmd` (standard input and output closed) to its end, bounded by `limit` and by `stop`;
/// past either the process is killed. A failure carries the end of its standard error, with
/// `host` replaced by `node` (the log names nodes, not hosts).
pub async fn run(
    tool: &'static str,
    mut cmd: Command,
    limit: Duration,
    stop: &mut watch::Receiver<bool>,
    (host, node): (&str, &str),
) -> Result<(), BackupError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| BackupError::Spawn { tool, source })?;
    let reader = tokio::spawn(tail(child.stderr.take()));
    let end = tokio::select! {
        s = child.wait() => End::Exited(s),
        _ = tokio::time::sleep(limit) => End::TimedOut,
        _ = stop.wait_for(|s| *s) => End::Stopped,
    };
    let status = match end {
        End::Exited(s) => s.map_err(|source| BackupError::Spawn { tool, source })?,
        End::TimedOut | End::Stopped => {
            let _ = child.kill().await;
            reader.abort();
            return Err(match end {
                End::Stopped => BackupError::Stopped,
                _ => BackupError::Timeout { tool, limit: crate::config::Dur(limit).to_string() },
            });
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = reader.await.unwrap_or_default();
    let text = if host.is_empty() { text } else { text.replace(host, node) };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let stderr = lines[lines.len().saturating_sub(5)..].join("; ");
    Err(BackupError::Tool { tool, status: status.to_string(), stderr })
}

/// Reads a pipe to its end, keeping the last [`STDERR_TAIL`] bytes.
async fn tail(pipe: Option<ChildStderr>) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let (mut kept, mut buf) = (Vec::new(), [0u8; 1024]);
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    let from = kept.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&kept[from..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[tokio::test]
    async fn a_failure_says_why_without_the_host_and_a_hang_is_killed() {
        let (_tx, mut stop) = watch::channel(false);
        let limit = Duration::from_secs(30);
        let node = ("db.internal", "replica0");
        run("pg_dump", sh("exit 0"), limit, &mut stop, node).await.unwrap();
        let e = run("pg_dump", sh("echo 'connection to db.internal failed' >&2; exit 1"), limit, &mut stop, node)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("connection to replica0 failed") && !e.contains("db.internal"), "{e}");
        let e = run("pg_dump", sh("sleep 60"), Duration::from_millis(100), &mut stop, node).await.unwrap_err();
        assert!(matches!(e, BackupError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_dir_other_users_can_write_is_refused_unless_sticky() {
        let dir = std::env::temp_dir().join(format!("pgshift-dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = |mode: u32| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            dir_problem(dir.to_str().unwrap())
        };
        assert_eq!(at(0o700), None);
        assert_eq!(at(0o755), None);
        assert!(at(0o777).is_some_and(|p| p.contains("writable by other users")), "{:?}", at(0o777));
        assert!(at(0o775).is_some(), "group-writable");
        assert_eq!(at(0o1777), None, "sticky, as /tmp");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(dir_problem(dir.to_str().unwrap()).is_some_and(|p| p.contains("cannot use dir")));
    }

    #[test]
    fn relative_path_entries_are_never_searched() {
        // A temp dir with an executable `pg_dump`, named relative to the working directory as
        // an entry like "", "." or "bin" in PATH is: a directory that depends on where pgshift
        // was started (perhaps one others can write to).
        let dir = std::env::temp_dir().join(format!("pgshift-find-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join("pg_dump");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = format!("{up}{}", dir.display().to_string().trim_start_matches('/'));
        assert!(executable(&Path::new(&relative).join("pg_dump")), "{relative} names the temp dir");
        let found = find_in("pg_dump", std::ffi::OsStr::new(&relative));
        assert!(found.as_deref().is_none_or(Path::is_absolute), "{found:?}");
        assert_eq!(find_in("pg_dump", dir.as_os_str()), Some(tool));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stopping_kills_the_tool() {
        let (tx, mut stop) = watch::channel(false);
        let _ = tx.send(true);
        let e = run("pg_dump", sh("sleep 60"), Duration::from_secs(60), &mut stop, ("", "")).await.unwrap_err();
        assert!(matches!(e, BackupError::Stopped), "{e}");
    }
}
