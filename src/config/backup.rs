//! `[backup]`: logical backups (`pg_dump -Fc`) taken from a replica, on a schedule and on
//! `POST /backup`, with retention by count and age (see docs/operator-guide.md, "Backups").

use serde::{Deserialize, Serialize};

use super::{Config, Dur, ANY_DATABASE};

/// Where `pg_dump` and `pg_restore` are looked for when not found on `PATH` (Debian's
/// postgresql-15 package, which the test bed installs).
pub const PG_BIN_FALLBACK: &str = "/usr/lib/postgresql/15/bin";

/// `[backup]`; absent: no backups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BackupConfig {
    /// Directory the backups go to, one subdirectory per database; it must exist.
    pub dir: String,
    /// Client-facing database names to back up; empty: every name listed in `[databases]`
    /// other than `*`, or, when none is listed, every database of the cluster clients reach.
    pub databases: Vec<String>,
    /// A backup runs this often ("0": only on `POST /backup`).
    pub schedule: Dur,
    /// "HH:MM" (UTC): scheduled runs start at this time of day and every `schedule` after it;
    /// empty: `schedule` after the newest backup on disk (at once if there is none).
    pub at: String,
    /// Backups kept per database, the newest ones (0: no limit by count).
    pub keep_count: usize,
    /// Backups older than this many days are removed (0: no limit by age).
    pub keep_days: u32,
    /// Dump from the primary when no replica is usable; false: the backup fails instead, so the
    /// primary never carries a dump's load unless an operator allowed it.
    pub allow_primary: bool,
    /// The `[[auth.users]]` entry pg_dump logs in as (its password reaches pg_dump through
    /// PGPASSWORD, never a command line). It must be able to read every table.
    pub user: String,
    /// pg_dump to run; empty: `pg_dump` on PATH, else under [`PG_BIN_FALLBACK`].
    pub pg_dump: String,
    /// pg_restore (checks each dump with `--list`); empty: found as `pg_dump` is.
    pub pg_restore: String,
    /// Bound on one database's dump and check; past it pg_dump is killed and the backup fails.
    pub timeout: Dur,
    /// How long pg_dump waits for a table's lock before the backup fails ("0": up to `timeout`).
    /// A client holding a lock on one table must not stall every backup for hours.
    pub lock_wait_timeout: Dur,
    /// How often each cluster's primary is asked for `pg_stat_archiver` ("0": never).
    pub archiver_interval: Dur,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: String::new(),
            databases: Vec::new(),
            schedule: Dur::secs(86_400),
            at: String::new(),
            keep_count: 30,
            keep_days: 30,
            allow_primary: false,
            user: String::new(),
            pg_dump: String::new(),
            pg_restore: String::new(),
            timeout: Dur::secs(6 * 3600),
            lock_wait_timeout: Dur::secs(60),
            archiver_interval: Dur::secs(60),
        }
    }
}

impl BackupConfig {
    /// `at` as milliseconds after midnight UTC; `None` when empty or not "HH:MM".
    pub fn at_ms(&self) -> Option<u64> {
        let (h, m) = self.at.trim().split_once(':')?;
        let ok = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
        if !ok(h) || !ok(m) {
            return None;
        }
        let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some((h * 60 + m) * 60_000)
    }

    /// Checks the section against the rest of the configuration (files and tools are checked
    /// when the runtime is built, like TLS files).
    pub(super) fn validate(&self, config: &Config, problems: &mut Vec<String>) {
        if self.dir.trim().is_empty() {
            problems.push("[backup] dir is empty: name the directory backups go to".into());
        }
        for name in &self.databases {
            if let Err(e) = file_safe_name(name) {
                problems.push(format!("[backup] databases: {name:?} {e}"));
            } else if !config.databases.is_empty()
                && !config.databases.contains_key(name)
                && !config.databases.contains_key(ANY_DATABASE)
            {
                problems.push(format!("[backup] databases: {name:?} is not in [databases] (and there is no \"*\")"));
            }
        }
        let schedule_ms = self.schedule.0.as_millis() as u64;
        if !self.at.is_empty() {
            match self.at_ms() {
                None => problems.push(format!("[backup] at = {:?} is not a UTC time of day like \"03:00\"", self.at)),
                Some(_) if schedule_ms == 0 => {
                    problems.push("[backup] at is set but schedule is 0 (no scheduled backups)".into())
                }
                Some(_) if 86_400_000 % schedule_ms != 0 => problems.push(format!(
                    "[backup] schedule = {:?} must divide a day (e.g. \"24h\", \"12h\", \"6h\") when at is set",
                    self.schedule.to_string()
                )),
                Some(_) => {}
            }
        }
        if self.user.is_empty() {
            problems.push("[backup] user is empty: name the [[auth.users]] entry pg_dump logs in as".into());
        } else if !config.auth.users.iter().any(|u| u.name == self.user) {
            problems.push(format!("[backup] user = {:?} is not listed in [[auth.users]]", self.user));
        }
        if self.timeout.0.is_zero() {
            problems.push("[backup] timeout must be above 0".into());
        }
    }
}

/// Whether a database name can be a file and directory name under `dir` without escaping it:
/// one path component, not `.` or `..`, no `/`, `\`, NUL or control characters, at most 63 bytes
/// (PostgreSQL's own limit).
pub fn file_safe_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name == "." || name == ".." {
        return Err("cannot be a file name (it names a directory)");
    }
    if name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err("contains a path separator or a control character");
    }
    if name.len() > 63 {
        return Err("is longer than 63 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: &str = "[[auth.users]]\nname = \"app\"\npassword = \"app\"\n";

    #[test]
    fn absent_means_off_and_defaults_are_the_documented_ones() {
        let c = Config::from_toml(USERS).unwrap();
        assert!(c.backup.is_none());
        let c = Config::from_toml(&format!("{USERS}[backup]\ndir = \"/b\"\nuser = \"app\"\n")).unwrap();
        let b = c.backup.unwrap();
        assert_eq!((b.keep_count, b.keep_days, b.allow_primary), (30, 30, false));
        assert_eq!(b.schedule, Dur::secs(86_400));
        assert!(b.databases.is_empty() && b.at.is_empty());
    }

    #[test]
    fn every_problem_of_the_section_is_listed() {
        let text = format!(
            "{USERS}[databases.app]\n[backup]\ndatabases = [\"../etc\", \"a/b\", \"..\", \"\", \"nope\", \"app\"]\n\
             at = \"25:00\"\nuser = \"ghost\"\ntimeout = 0\nkeep_cout = 3\n"
        );
        let e = Config::from_toml(&text).unwrap_err().0.join("\n");
        for want in [
            "[backup] dir is empty",
            "\"../etc\" contains a path separator",
            "\"a/b\" contains a path separator",
            "\"..\" cannot be a file name",
            "\"\" is empty",
            "\"nope\" is not in [databases]",
            "at = \"25:00\" is not a UTC time of day",
            "user = \"ghost\" is not listed",
            "[backup] timeout must be above 0",
            "unknown key `backup.keep_cout` (did you mean `keep_count`?)",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        assert!(!e.contains("\"app\" is not"), "{e}");
    }

    #[test]
    fn at_needs_a_schedule_that_divides_a_day() {
        let base = format!("{USERS}[backup]\ndir = \"/b\"\nuser = \"app\"\nat = \"03:30\"\n");
        let c = Config::from_toml(&base).unwrap();
        assert_eq!(c.backup.unwrap().at_ms(), Some((3 * 60 + 30) * 60_000));
        let e = Config::from_toml(&format!("{base}schedule = \"7h\"\n")).unwrap_err().0.join("\n");
        assert!(e.contains("must divide a day"), "{e}");
        assert!(Config::from_toml(&format!("{base}schedule = \"6h\"\n")).is_ok());
        let e = Config::from_toml(&format!("{base}schedule = 0\n")).unwrap_err().0.join("\n");
        assert!(e.contains("schedule is 0"), "{e}");
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "x/..", "/abs", "a\\b", "a\0b", "a\nb", &"x".repeat(64)] {
            assert!(file_safe_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["app", "my-db", "db.2024", "Δ", "...", "a b"] {
            assert!(file_safe_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn environment_overrides_reach_the_section() {
        let vars = [("PGSHIFT_BACKUP_DIR".to_string(), "/srv/b".to_string())];
        let c = Config::from_toml_with_env(&format!("{USERS}[backup]\nuser = \"app\"\n"), vars).unwrap();
        assert_eq!(c.backup.unwrap().dir, "/srv/b");
    }
}
