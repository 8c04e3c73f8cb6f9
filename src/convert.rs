//! `pgshift convert-pgbouncer`: a PgBouncer configuration turned into an equivalent proxy.toml.
//!
//! The ini is parsed ([`ini`]), every setting with a pgshift equivalent is mapped ([`map`]) onto
//! an [`Output`] that remembers where each value came from, the output is rendered as commented
//! TOML and loaded with pgshift's own [`Config`] loader (so what is written is what pgshift
//! accepts), and every setting that could not be mapped, or only with a difference, becomes a
//! [`Note`] printed on standard error.

mod ini;
mod map;
#[cfg(test)]
mod tests;
mod topology;
mod unmapped;

use std::io::Write;
use std::process::ExitCode;
use toml::Value;

use crate::cli::ConvertArgs;
use crate::config::Config;

/// A section of the output, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sect {
    /// `[proxy]`.
    Proxy,
    /// `[auth]`.
    Auth,
    /// `[tls]`.
    Tls,
    /// `[primary]`.
    Primary,
    /// `[admin]`.
    Admin,
}

impl Sect {
    fn header(self) -> &'static str {
        match self {
            Sect::Proxy => "[proxy]",
            Sect::Auth => "[auth]",
            Sect::Tls => "[tls]",
            Sect::Primary => "[primary]",
            Sect::Admin => "[admin]",
        }
    }
}

/// One `key = value` of the output.
#[derive(Debug, Clone)]
struct Line {
    sect: Sect,
    key: &'static str,
    value: Value,
    /// "pgbouncer.ini:12", or why the value is there although the ini does not set it.
    from: String,
}

/// One `[[auth.users]]` of the output (from userlist.txt).
#[derive(Debug, Clone)]
struct User {
    name: String,
    secret: String,
    from: String,
}

/// One `key = value` of a [`Table`].
#[derive(Debug, Clone)]
struct TableLine {
    key: &'static str,
    value: Value,
    from: String,
}

/// A table of the output besides the fixed sections: `[[replicas]]`, `[clusters.NAME]`,
/// `[databases.NAME]` or `[users.NAME]`, written in the order they were added.
#[derive(Debug, Clone)]
struct Table {
    /// The header as written: `[databases."*"]`, `[[replicas]]`.
    header: String,
    /// Where the table came from ("pgbouncer.ini:5 [databases] app").
    from: String,
    lines: Vec<TableLine>,
}

impl Table {
    fn new(header: String, from: String) -> Table {
        Table { header, from, lines: Vec::new() }
    }

    /// Sets a key (a later value replaces the earlier one, as in PgBouncer's connection strings).
    fn set(&mut self, key: &'static str, value: Value, from: impl Into<String>) {
        let from = from.into();
        match self.lines.iter_mut().find(|l| l.key == key) {
            Some(l) => (l.value, l.from) = (value, from),
            None => self.lines.push(TableLine { key, value, from }),
        }
    }
}

/// Whether a setting was left out or carried over with a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Not in the output.
    NotMapped,
    /// In the output, but pgshift behaves differently: read the reason.
    Different,
}

/// A setting the operator must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Not mapped, or mapped with a difference.
    pub kind: NoteKind,
    /// "pgbouncer.ini:12".
    pub origin: String,
    /// "logfile = /var/log/pgbouncer.log" (secrets shown as <redacted>).
    pub setting: String,
    /// Why, and what to do instead where there is something.
    pub reason: String,
}

/// The proxy.toml being built.
#[derive(Debug, Default)]
struct Output {
    lines: Vec<Line>,
    users: Vec<User>,
    /// `[[replicas]]`, `[clusters]`, `[databases]` and `[users]` tables, written after `[primary]`.
    tables: Vec<Table>,
    notes: Vec<Note>,
}

impl Output {
    /// Sets a key (a later value for the same key replaces the earlier one, as in PgBouncer).
    fn set(&mut self, sect: Sect, key: &'static str, value: Value, from: impl Into<String>) {
        let from = from.into();
        match self.lines.iter_mut().find(|l| l.sect == sect && l.key == key) {
            Some(l) => (l.value, l.from) = (value, from),
            None => self.lines.push(Line { sect, key, value, from }),
        }
    }

    fn get(&self, sect: Sect, key: &str) -> Option<&Value> {
        self.lines.iter().find(|l| l.sect == sect && l.key == key).map(|l| &l.value)
    }

    fn note(&mut self, kind: NoteKind, origin: &str, setting: String, reason: impl Into<String>) {
        self.notes.push(Note { kind, origin: origin.to_string(), setting, reason: reason.into() });
    }

    /// Whether the output holds a password (a userlist.txt secret or a forced user's password).
    fn has_secrets(&self) -> bool {
        !self.users.is_empty() || self.tables.iter().flat_map(|t| &t.lines).any(|l| l.key == "password")
    }
}

/// The result of a conversion.
#[derive(Debug)]
pub struct Conversion {
    /// The proxy.toml text.
    pub toml: String,
    /// Settings not mapped or mapped with a difference, in input order.
    pub notes: Vec<Note>,
    /// What pgshift's loader says about `toml` (empty: valid).
    pub problems: Vec<String>,
    /// The text holds passwords (users inlined from userlist.txt, or a `[databases]` entry's
    /// `password=`): the file is written readable by its owner only.
    pub has_secrets: bool,
}

/// Converts pgbouncer.ini text (named `ini_name` in comments) and optionally userlist.txt text
/// (`(name, text)`). Fails only when an input cannot be parsed at all.
pub fn convert(ini_name: &str, ini_text: &str, userlist: Option<(&str, &str)>) -> Result<Conversion, String> {
    let parsed = ini::parse(ini_text).map_err(|e| format!("{ini_name}: {e}"))?;
    let users = match userlist {
        Some((name, text)) => Some((name, crate::auth::userlist::parse(text).map_err(|e| format!("{name}: {e}"))?)),
        None => None,
    };
    let mut out = Output::default();
    map::map(&parsed, ini_name, users, &mut out);
    // Notes in file order; those about settings the ini does not have ("(...)") last.
    out.notes
        .sort_by_key(|n| n.origin.rsplit_once(':').and_then(|(_, l)| l.parse::<usize>().ok()).unwrap_or(usize::MAX));
    let toml = render(&out, ini_name);
    // Valid means what start would accept: the loader's checks, then the files it names.
    let problems = match Config::from_toml(&toml) {
        Ok(c) => crate::proxy::check(&c).err().unwrap_or_default(),
        Err(e) => e.0,
    };
    let has_secrets = out.has_secrets();
    Ok(Conversion { toml, notes: out.notes, problems, has_secrets })
}

/// Keys in the order of the example proxy.toml and the operator guide.
const KEY_ORDER: &[&str] = &[
    "listen",
    "unix_socket_dir",
    "unix_socket_mode",
    "pool_mode",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_client_conn",
    "query_wait_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "server_connect_timeout",
    "server_check_delay",
    "server_reset_query",
    "client_login_timeout",
    "query_timeout",
    "idle_transaction_timeout",
    "client_idle_timeout",
    "max_prepared_statements",
    "max_db_connections",
    "max_user_connections",
    "max_db_client_connections",
    "max_user_client_connections",
    "type",
    "auth_file",
    "auth_user",
    "auth_query",
    "auth_database",
    "mode",
    "cert",
    "key",
    "client_ca",
    "server_mode",
    "server_ca",
    "host",
    "port",
    "admin_users",
];

/// Keys of the `[clusters]`, `[databases]` and `[users]` tables, in the operator guide's order.
const TABLE_KEY_ORDER: &[&str] = &[
    "hosts",
    "host",
    "port",
    "cluster",
    "dbname",
    "user",
    "password",
    "pool_mode",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "server_lifetime",
    "query_timeout",
    "max_db_connections",
    "max_db_client_connections",
    "max_user_connections",
    "max_user_client_connections",
];

/// `key = value` padded so comments line up as in the example proxy.toml.
fn kv_line(key: &str, value: &Value, from: &str) -> String {
    let kv = format!("{key} = {value}");
    format!("{kv:<34} # {from}\n")
}

fn render(out: &Output, ini_name: &str) -> String {
    let mut s = format!(
        "# pgshift configuration converted from {ini_name} by `pgshift convert-pgbouncer`.\n\
         # Each value names its origin. Settings that could not be mapped are listed at the end.\n\
         # Check it with: pgshift --check-config --print --config THIS_FILE\n"
    );
    if out.has_secrets() {
        s.push_str("# It holds passwords: keep it as private as the files they came from.\n");
    }
    for sect in [Sect::Proxy, Sect::Auth, Sect::Tls, Sect::Primary, Sect::Admin] {
        if sect == Sect::Admin {
            render_tables(&out.tables, &mut s);
        }
        let mut lines: Vec<_> = out.lines.iter().filter(|l| l.sect == sect).collect();
        lines.sort_by_key(|l| KEY_ORDER.iter().position(|k| *k == l.key).unwrap_or(usize::MAX));
        let has_users = sect == Sect::Auth && !out.users.is_empty();
        if lines.is_empty() && !has_users {
            continue;
        }
        s.push('\n');
        s.push_str(sect.header());
        s.push('\n');
        for l in lines {
            s.push_str(&kv_line(l.key, &l.value, &l.from));
        }
        if sect == Sect::Auth {
            for u in &out.users {
                s.push_str("[[auth.users]]\n");
                s.push_str(&kv_line("name", &Value::String(u.name.clone()), &u.from));
                s.push_str(&format!("password = {}\n", Value::String(u.secret.clone())));
            }
        }
    }
    render_notes(&out.notes, &mut s);
    s
}

/// `[[replicas]]`, `[clusters.*]`, `[databases.*]` and `[users.*]`, each headed by its origin.
fn render_tables(tables: &[Table], s: &mut String) {
    for t in tables {
        s.push('\n');
        s.push_str(&format!("{:<34} # {}\n", t.header, t.from));
        let mut lines: Vec<_> = t.lines.iter().collect();
        lines.sort_by_key(|l| TABLE_KEY_ORDER.iter().position(|k| *k == l.key).unwrap_or(usize::MAX));
        for l in lines {
            s.push_str(&kv_line(l.key, &l.value, &l.from));
        }
    }
}

fn render_notes(notes: &[Note], s: &mut String) {
    if !notes.is_empty() {
        s.push_str("\n# Not mapped, or mapped with a difference (see docs/migrating-from-pgbouncer.md):\n");
    }
    for n in notes {
        let tag = if n.kind == NoteKind::Different { "differs" } else { "not mapped" };
        s.push_str(&format!("#   {} {}: {}: {}\n", n.origin, n.setting, tag, n.reason));
    }
}

/// Prints the notes and problems on standard error.
fn report(c: &Conversion) {
    let (missing, differ): (Vec<&Note>, Vec<&Note>) = c.notes.iter().partition(|n| n.kind == NoteKind::NotMapped);
    for (title, notes) in [("not mapped", &missing), ("mapped with a difference", &differ)] {
        if notes.is_empty() {
            continue;
        }
        eprintln!("pgshift convert-pgbouncer: {} setting(s) {title}:", notes.len());
        for n in notes {
            eprintln!("  {}: {}: {}", n.origin, n.setting, n.reason);
        }
    }
    if c.problems.is_empty() {
        eprintln!("pgshift convert-pgbouncer: the result is a valid pgshift configuration");
    } else {
        eprintln!("pgshift convert-pgbouncer: the result does not validate yet; fix these and check again:");
        for p in &c.problems {
            eprintln!("  - {p}");
        }
    }
}

/// The subcommand: read, convert, write, report. Exit 0 valid, 1 I/O failure, 2 invalid result.
pub fn run(args: &ConvertArgs) -> ExitCode {
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let result = (|| {
        let ini_text = read(&args.ini)?;
        let user_text = args.userlist.as_deref().map(read).transpose()?;
        let ini_name = file_name(&args.ini);
        let user_name = args.userlist.as_deref().map(file_name);
        let userlist = user_name.as_deref().zip(user_text.as_deref());
        convert(&ini_name, &ini_text, userlist)
    })();
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgshift convert-pgbouncer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = write_output(args, &c) {
        eprintln!("pgshift convert-pgbouncer: {e}");
        return ExitCode::FAILURE;
    }
    report(&c);
    if c.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn write_output(args: &ConvertArgs, c: &Conversion) -> Result<(), String> {
    let Some(path) = &args.output else {
        return std::io::stdout().write_all(c.toml.as_bytes()).map_err(|e| format!("cannot write: {e}"));
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if args.force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    if c.has_secrets {
        opts.mode(0o600); // it holds passwords (userlist.txt's, or a forced user's)
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{} exists (--force overwrites it)", path.display()),
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    if c.has_secrets {
        // `mode` above applies only to a new file; an overwritten one is narrowed here.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private: {e}", path.display()))?;
    }
    f.write_all(c.toml.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("pgshift convert-pgbouncer: wrote {}", path.display());
    Ok(())
}
