//! The `pgshift` command line beyond running the proxy: subcommands, and the manual page that
//! `pgshift --help` prints (the sections a man page has, so operators find things where they look).

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Dur;

/// `-h`: a one-paragraph DESCRIPTION.
pub const ABOUT: &str = "\
DESCRIPTION
    A PostgreSQL connection proxy. The manual (signals, environment, files, exit status): --help";

/// NAME and SYNOPSIS, printed first by `-h` and `--help`.
pub const BEFORE_HELP: &str = "\
NAME
    pgshift - a PostgreSQL connection proxy: transaction pooling, TLS termination, read/write split
    to streaming replicas, an HTTP admin port, and phased migration to a new database

SYNOPSIS
    pgshift [-c PATH]
    pgshift --check-config [--print] [-c PATH]
    pgshift healthcheck [--url URL] [--timeout DURATION]
    pgshift convert-pgbouncer PGBOUNCER_INI [USERLIST_TXT] [-o PATH] [--force]
    pgshift --help | --version";

/// The layout of both `-h` and `--help`: man-page section headings around clap's generated parts.
pub const HELP_TEMPLATE: &str = "\
{before-help}{about-with-newline}
OPTIONS
{options}

SUBCOMMANDS
{subcommands}{after-help}
";

/// DESCRIPTION (`--help`).
pub const LONG_ABOUT: &str = "\
DESCRIPTION
    pgshift sits between applications and PostgreSQL. Point an application's DATABASE_URL at it
    (postgres://app:app@pgshift-host:6432/app) and it:

    - pools server connections per (user, database, backend) in transaction mode (or session
      mode): thousands of clients share a few dozen PostgreSQL connections. Named prepared
      statements, SET and COPY keep working across pooled connections;
    - terminates TLS from clients (rustls) and can use TLS toward PostgreSQL;
    - sends read-only statements round-robin to streaming replicas listed as [[replicas]],
      skipping replicas that are down or lag more than max_replica_lag, and keeps writes and
      transactions on the primary; after a client writes, its reads go only to replicas that
      have replayed that write (read_your_writes);
    - serves health, readiness and pool statistics on an HTTP admin port.

    With no subcommand, pgshift loads the configuration (file, then PGSHIFT_* environment
    variables), listens, and runs in the foreground, logging to standard error. Settings and
    their PgBouncer equivalents: docs/operator-guide.md.";

/// SIGNALS, ENVIRONMENT, FILES, EXIT STATUS, EXAMPLES, SEE ALSO (`--help`).
pub const AFTER_LONG_HELP: &str = "\
SIGNALS
    SIGHUP   Reload the configuration file (and PGSHIFT_* variables, files named by *_FILE
             variables, auth_file, password_file, TLS certificates) without dropping clients. An
             invalid configuration is refused and logged; the previous one stays in force.
             [proxy] listen changes only at the next restart.
    SIGTERM  Drain: stop accepting, let running transactions finish, close idle clients, exit 0.
             Clients still connected after [proxy] shutdown_timeout (30s) are closed.
    SIGINT   Exit at once; connected clients get 57P01.
    SIGUSR2  Binary upgrade: start the binary at the path pgshift was started from, with the same
             arguments; it binds the same ports (SO_REUSEPORT) and, once it listens, this process
             stops accepting and hands it each client between transactions (socket, cancel key,
             settings, prepared statements), then exits 0. Plaintext TCP and Unix-socket clients
             move without noticing; TLS, session-mode and pinned clients are closed at a
             transaction boundary with 57P01. Clients still in a transaction after
             [proxy] upgrade_timeout (30s) are closed. If the new process fails to start, this one
             keeps serving and logs why.

ENVIRONMENT
    Precedence: defaults < configuration file < environment < command-line flags.

    PGSHIFT_<SECTION>_<KEY>
        Overrides one key of proxy.toml, e.g. PGSHIFT_PROXY_DEFAULT_POOL_SIZE=40,
        PGSHIFT_ADMIN_LISTEN=0.0.0.0:6480, PGSHIFT_TLS_MODE=require. Lists are comma separated
        (PGSHIFT_ADMIN_ADMIN_USERS=alice,bob). Sections: proxy auth tls primary routing admin
        migration backup log. An unknown key is an error.
    PGSHIFT_<SECTION>_<KEY>_FILE
        The same, with the value read from a file (first line), for secrets mounted as files:
        PGSHIFT_ADMIN_TOKEN_FILE=/run/secrets/pgshift_admin_token.
    PGSHIFT_PRIMARY_URL=postgres://host[:port]
        Stands in for the [primary] table (user, password and database in the URL are ignored).
    PGSHIFT_REPLICAS=host[:port],host[:port],...
        Replaces every [[replicas]] table (postgres:// URLs accepted too; empty: no replicas).
    PGSHIFT_MIGRATION_TARGET_URL=postgres://host[:port]
        Stands in for [migration.target].
    PGSHIFT_LOG (or RUST_LOG)
        Log filter: error, warn, info (default), debug, trace.
    PGSHIFT_HEALTHCHECK_URL
        Default --url of `pgshift healthcheck`.

    Passwords of [[auth.users]] are never taken from the environment: use password_file (one
    file per user, e.g. a Docker or Kubernetes secret), auth_file (a PgBouncer userlist.txt) or
    auth_user + auth_query.

FILES
    ./proxy.toml                The configuration read by default (--config to change).
    /etc/pgshift/proxy.toml     The configuration in the container image.
    certs/server.crt, .key      Client-side TLS certificate and key ([tls] cert, key).
    userlist.txt                Users in PgBouncer's auth_file format ([auth] auth_file).

EXIT STATUS
    0   Normal exit (SIGTERM drain or SIGINT), configuration valid (--check-config), healthy
        (healthcheck), proxy.toml written and valid (convert-pgbouncer).
    1   Runtime failure (cannot start the runtime or install signal handlers), unhealthy
        (healthcheck), cannot read the input or write the output (convert-pgbouncer).
    2   Invalid configuration, every problem listed on standard error; a listen address that
        cannot be bound; convert-pgbouncer wrote a proxy.toml that does not validate.

EXAMPLES
    pgshift --config /etc/pgshift/proxy.toml
    pgshift --check-config --print --config proxy.toml
    PGSHIFT_PRIMARY_URL=postgres://db:5432 PGSHIFT_REPLICAS=db-r1,db-r2 pgshift -c proxy.toml
    pgshift healthcheck --url http://127.0.0.1:6480/health
    pgshift convert-pgbouncer /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/userlist.txt -o proxy.toml
    pgshift migration-verify --config proxy.toml --database app

SEE ALSO
    docs/operator-guide.md, docs/migrating-from-pgbouncer.md, docs/migration-runbook.md,
    docs/troubleshooting.md, docs/admin.md (admin endpoints), pgbouncer(1), psql(1)";

/// `-h`: where the rest is.
pub const AFTER_HELP: &str = "\
SEE ALSO
    pgshift --help (the whole manual), docs/operator-guide.md";

/// What pgshift can do besides running the proxy.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Exit 0 if the admin port answers HTTP 200 on /health, else 1 (container HEALTHCHECK).
    ///
    /// One HTTP GET, bounded by --timeout. The container image has no curl; this is what its
    /// HEALTHCHECK runs. The admin port must be enabled ([admin] listen).
    Healthcheck(HealthcheckArgs),
    /// Write a proxy.toml equivalent to a PgBouncer configuration.
    ///
    /// Reads pgbouncer.ini (and optionally its userlist.txt, whose users are then written inline
    /// as [[auth.users]]), maps every setting that has a pgshift equivalent, checks the result
    /// with pgshift's own configuration loader, and lists on standard error every setting it
    /// could not map, with the reason. See docs/migrating-from-pgbouncer.md.
    ConvertPgbouncer(ConvertArgs),
    /// Compare the migration's source and target table by table, and print the report (JSON).
    ///
    /// The same check as POST /migration/verify: row counts, and an md5 of every row keyed by
    /// its primary key (a sample of large tables, see [migration] verify_full_below). Exits 0
    /// when no difference is found, 1 when some are, 2 when the comparison could not run.
    MigrationVerify(VerifyArgs),
}

/// `pgshift migration-verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Configuration file with a [migration] section.
    #[arg(long, short = 'c', default_value = "proxy.toml", value_name = "PATH")]
    pub config: PathBuf,
    /// Database to compare (default: [migration] verify_database).
    #[arg(long)]
    pub database: Option<String>,
}

/// `pgshift healthcheck`.
#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// URL to GET: http://host:port/path, or unix:/path/to.sock for an admin port on a unix socket.
    #[arg(long, env = "PGSHIFT_HEALTHCHECK_URL", default_value = crate::healthcheck::DEFAULT_URL)]
    pub url: String,
    /// Give up (unhealthy) after this long: "3s", "500ms".
    #[arg(long, default_value = "5s", value_parser = Dur::parse)]
    pub timeout: Dur,
}

/// `pgshift convert-pgbouncer`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// PgBouncer configuration file.
    #[arg(value_name = "PGBOUNCER_INI")]
    pub ini: PathBuf,
    /// PgBouncer userlist.txt; its users become [[auth.users]] entries (secrets included).
    #[arg(value_name = "USERLIST_TXT")]
    pub userlist: Option<PathBuf>,
    /// Write proxy.toml here instead of standard output.
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs a subcommand; the process exit status.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Healthcheck(args) => healthcheck(&args),
        Command::ConvertPgbouncer(args) => crate::convert::run(&args),
        Command::MigrationVerify(args) => migration_verify(&args),
    }
}

fn migration_verify(args: &VerifyArgs) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("pgshift migration-verify: {e}");
        ExitCode::from(2)
    };
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let Some(m) = config.migration.clone() else { return fail(&"the configuration has no [migration] section") };
    let rt = match crate::shared::Runtime::build(config, None) {
        Ok(rt) => rt,
        Err(problems) => return fail(&problems.join("; ")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // Sequences follow only under statement sync (`auto` takes it without an admin user).
    use crate::config::SyncChoice;
    let sequences = m.sync == SyncChoice::Statement || (m.sync == SyncChoice::Auto && m.admin_user.is_empty());
    let db = args.database.clone().unwrap_or(m.verify_database);
    let (full_below, pct) = (m.verify_full_below, m.verify_sample_percent);
    let report = runtime.block_on(crate::migration::verify::run(&rt, &db, full_below, pct, sequences));
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    match (&report.error, report.differences) {
        (Some(e), _) => fail(e),
        (None, 0) => ExitCode::SUCCESS,
        (None, _) => ExitCode::FAILURE,
    }
}

fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgshift healthcheck: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout: Duration = args.timeout.0;
    match runtime.block_on(crate::healthcheck::check(&args.url, timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgshift healthcheck: {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}
