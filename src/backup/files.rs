//! Backup files on disk: `<dir>/<database>/<database>-<UTC timestamp>.dump`, their names and
//! timestamps, the per-database directory (never reached through a symlink), and retention.
//!
//! Only names of exactly that pattern are ever pruned: anything else in the directory (notes, a
//! copy an operator made, another tool's files) is left alone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::BackupError;
use crate::config::{file_safe_name, BackupConfig};

/// Suffix of a complete backup.
const DUMP: &str = ".dump";
/// Suffix of a dump still being written or checked.
pub const PARTIAL: &str = ".partial";
const DAY_MS: u64 = 86_400_000;

/// `20261207T030000.123Z`: UTC, ISO 8601 basic format with milliseconds (sorts as it reads, and
/// has no `:` for file systems that refuse one).
pub fn format_ts(ms: u64) -> String {
    let (days, rest) = ((ms / DAY_MS) as i64, ms % DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}.{milli:03}Z")
}

/// The inverse of [`format_ts`]; `None` for anything it would not have written.
pub fn parse_ts(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec, milli) = (num(9..11)?, num(11..13)?, num(13..15)?, num(16..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 || y < 1970 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y as i64, mo as u32, d as u32)).ok()?;
    let ms = days * DAY_MS + ((h * 60 + mi) * 60 + sec) * 1000 + milli;
    // Rejects dates like 20260231 that the arithmetic above would roll over.
    (format_ts(ms) == s).then_some(ms)
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `<database>-<timestamp>.dump`.
pub fn file_name(db: &str, ms: u64) -> String {
    format!("{db}-{}{DUMP}", format_ts(ms))
}

/// The timestamp of a file named exactly `<db>-<timestamp>.dump`; `None` for any other name.
pub fn parse_file_name(db: &str, name: &str) -> Option<u64> {
    let ts = name.strip_prefix(db)?.strip_prefix('-')?.strip_suffix(DUMP)?;
    parse_ts(ts)
}

/// `<dir>/<db>`, created (mode 0700: dumps hold every row) if missing. The name must be a single
/// safe path component, and an existing entry must be a real directory, not a symlink that
/// could lead outside `dir`, owned by pgshift's user and writable by no one else (who could
/// swap a finished dump for another, or the partial file for a symlink pg_dump writes through).
pub fn db_dir(dir: &str, db: &str) -> Result<PathBuf, BackupError> {
    file_safe_name(db).map_err(|why| BackupError::BadName { name: db.into(), why })?;
    let path = Path::new(dir).join(db);
    if path.parent() != Some(Path::new(dir)) {
        return Err(BackupError::BadName { name: db.into(), why: "does not name one entry of the directory" });
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_dir() => private(&path, &m).map(|()| path),
        Ok(_) => Err(io(&path, "is not a directory", std::io::ErrorKind::AlreadyExists.into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| io(&path, "cannot create", e))?;
            Ok(path)
        }
        Err(e) => Err(io(&path, "cannot read", e)),
    }
}

/// An existing database directory must be pgshift's own and not group- or world-writable.
fn private(path: &Path, m: &std::fs::Metadata) -> Result<(), BackupError> {
    let me = rustix::process::geteuid().as_raw();
    let why = if m.uid() != me {
        format!("is owned by uid {}, not by pgshift's user (uid {me})", m.uid())
    } else if m.mode() & 0o022 != 0 {
        format!("is writable by others (mode {:o}); chmod 700 it", m.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(io(path, "refusing the backup directory", std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)))
}

/// Creates the (empty) partial file exclusively, mode 0600: it never follows a planted symlink
/// nor reuses an existing file, and pg_dump's later truncating open keeps the mode.
pub fn reserve(path: &Path) -> Result<(), BackupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| io(path, "cannot create", e))
}

/// Flushes the checked dump to disk, renames it into place and flushes the directory entry, so
/// a crash leaves either no backup or a complete one under its final name. Returns its size.
pub fn publish(partial: &Path, done: &Path) -> Result<u64, BackupError> {
    let f = std::fs::File::open(partial).map_err(|e| io(partial, "cannot open", e))?;
    f.sync_all().map_err(|e| io(partial, "cannot flush", e))?;
    let size = f.metadata().map_err(|e| io(partial, "cannot read", e))?.len();
    std::fs::rename(partial, done).map_err(|e| io(done, "cannot rename the checked dump to", e))?;
    if let Some(parent) = done.parent() {
        // Best effort: some file systems refuse fsync on a directory.
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(size)
}

/// An I/O failure naming the path.
pub fn io(path: &Path, what: &str, source: std::io::Error) -> BackupError {
    BackupError::Io { what: format!("{what} {}", path.display()), source }
}

/// Complete backups of `db` in `db_dir`, newest first, as (timestamp, file name).
pub fn backups_in(db_dir: &Path, db: &str) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = std::fs::read_dir(db_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((parse_file_name(db, &name)?, name))
        })
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    out
}

/// Which of `backups` (newest first) retention removes: past the newest `keep_count`, or older
/// than `keep_days` (0 turns either limit off). `keep` (the backup just written) always stays.
pub fn to_prune(backups: &[(u64, String)], keep: &str, keep_count: usize, keep_days: u32, now_ms: u64) -> Vec<String> {
    let oldest_kept = now_ms.saturating_sub(u64::from(keep_days) * DAY_MS);
    backups
        .iter()
        .enumerate()
        .filter(|(_, (_, name))| name != keep)
        .filter(|(rank, (ts, _))| (keep_count > 0 && *rank >= keep_count) || (keep_days > 0 && *ts < oldest_kept))
        .map(|(_, (_, name))| name.clone())
        .collect()
}

/// Applies retention to `db`'s directory after `keep` succeeded, and removes partial files that
/// no run can still be writing (older than `[backup] timeout`). Returns the backups removed.
pub fn prune(db_dir: &Path, db: &str, keep: &str, cfg: &BackupConfig, now_ms: u64) -> Vec<String> {
    let victims = to_prune(&backups_in(db_dir, db), keep, cfg.keep_count, cfg.keep_days, now_ms);
    let mut removed = Vec::new();
    for name in victims {
        match std::fs::remove_file(db_dir.join(&name)) {
            Ok(()) => removed.push(name),
            Err(e) => tracing::warn!(database = %db, file = %name, "backup retention: cannot remove: {e}"),
        }
    }
    let stale_before = now_ms.saturating_sub(cfg.timeout.0.as_millis() as u64);
    for e in std::fs::read_dir(db_dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else { continue };
        let started = name.strip_suffix(PARTIAL).and_then(|n| parse_file_name(db, n));
        if started.is_some_and(|t| t < stale_before) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    removed
}

/// The newest backup of each database directory under `dir`: (database, timestamp, size).
pub fn newest_on_disk(dir: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(db) = e.file_name().into_string() else { continue };
        if !e.file_type().is_ok_and(|t| t.is_dir()) || file_safe_name(&db).is_err() {
            continue;
        }
        if let Some((ts, name)) = backups_in(&e.path(), &db).into_iter().next() {
            let size = std::fs::metadata(e.path().join(name)).map_or(0, |m| m.len());
            out.push((db, ts, size));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_read_as_utc() {
        assert_eq!(format_ts(0), "19700101T000000.000Z");
        // 2026-12-07 03:04:05.678 UTC
        let t = 1_796_612_645_678;
        assert_eq!(format_ts(t), "20261207T030405.678Z");
        assert_eq!(parse_ts("20261207T030405.678Z"), Some(t));
        assert_eq!(parse_ts(&format_ts(951_782_400_000)), Some(951_782_400_000), "2000-02-29");
        for bad in ["20260231T000000.000Z", "20261207T030405Z", "2026120xT030405.678Z", "20261207T240000.000Z", ""] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_exact_names_count_as_backups() {
        let name = file_name("app", 1_796_612_645_678);
        assert_eq!(name, "app-20261207T030405.678Z.dump");
        assert_eq!(parse_file_name("app", &name), Some(1_796_612_645_678));
        for other in [
            "app-20261207T030405.678Z.dump.partial",
            "app-2-20261207T030405.678Z.dump",
            "apps-20261207T030405.678Z.dump",
            "app-20261207T030405.678Z.dump.bak",
            "notes.txt",
        ] {
            assert_eq!(parse_file_name("app", other), None, "{other}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_by_count_and_drops_the_old_by_age() {
        let now = 100 * DAY_MS;
        let list: Vec<(u64, String)> = (0..5).map(|i| (now - i * DAY_MS, format!("f{i}"))).collect();
        assert_eq!(to_prune(&list, "f0", 3, 0, now), ["f3", "f4"]);
        assert_eq!(to_prune(&list, "f0", 0, 2, now), ["f3", "f4"]);
        assert_eq!(to_prune(&list, "f0", 2, 30, now), ["f2", "f3", "f4"]);
        assert!(to_prune(&list, "f0", 0, 0, now).is_empty(), "both limits off: keep everything");
        // The backup just written stays even when a clock step makes it look old.
        assert_eq!(to_prune(&list, "f4", 1, 0, now), ["f1", "f2", "f3"]);
    }

    #[test]
    fn the_database_directory_is_never_reached_through_a_symlink() {
        let base = std::env::temp_dir().join(format!("pgshift-files-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("outside")).unwrap();
        let dir = base.join("backups");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(base.join("outside"), dir.join("evil")).unwrap();
        let d = dir.to_str().unwrap();
        assert!(db_dir(d, "evil").is_err());
        assert!(db_dir(d, "..").is_err());
        assert!(db_dir(d, "a/../../x").is_err());
        let ok = db_dir(d, "app").unwrap();
        assert_eq!(ok, dir.join("app"));
        let partial = ok.join("x.partial");
        reserve(&partial).unwrap();
        assert!(reserve(&partial).is_err(), "an existing file is never reused");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
