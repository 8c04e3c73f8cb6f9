//! PgBouncer settings that have no pgshift equivalent, each with the reason an operator reads.

/// Settings without a pgshift equivalent, and why.
pub fn unmappable(key: &str) -> Option<&'static str> {
    Some(match key {
        "logfile" | "syslog" | "syslog_ident" | "syslog_facility" | "log_connections" | "log_disconnections"
        | "log_pooler_errors" | "log_stats" | "verbose" | "stats_period" => {
            "pgshift logs to standard error (PGSHIFT_LOG sets the level); statistics are on the admin port"
        }
        "pidfile" => "pgshift runs in the foreground and writes no pid file (use the service manager)",
        "user" => "pgshift does not switch OS user: start it as the user it should run as",
        "unix_socket_group" => {
            "no equivalent: the socket file takes pgshift's group (its directory's, when that is setgid): run \
             pgshift under that group or use such a directory, with unix_socket_mode 0770"
        }
        "so_reuseport" | "peer_id" => "not needed: one pgshift process uses every core ([proxy] workers)",
        "listen_backlog" => "no equivalent: the listen backlog is the OS default",
        "server_round_robin" => {
            "no equivalent: idle server connections are reused most recent first (PgBouncer's default)"
        }
        "server_check_query" => "no equivalent: pgshift's check is an empty query (\";\")",
        "server_fast_close"
        | "server_login_retry"
        | "query_wait_notify"
        | "transaction_timeout"
        | "application_name_add_host"
        | "disable_pqexec" => "no pgshift equivalent",
        "dns_max_ttl" | "dns_nxdomain_ttl" | "dns_zone_check_period" | "resolv_conf" => {
            "no equivalent: host names are resolved at each connect"
        }
        "ignore_startup_parameters" => {
            "not needed: pgshift applies every startup parameter as a session setting, as PostgreSQL would"
        }
        "track_extra_parameters" => "not needed: pgshift tracks every setting a client changes and replays it",
        "stats_users" => "no equivalent: statistics are served over HTTP on the admin port (/stats, /metrics)",
        "auth_ident_file" => "pgshift has no ident file (the hba method ident is not supported)",
        "autodb_idle_timeout" => "not needed: pools are made on demand and shrink with server_idle_timeout",
        "pkt_buf" | "sbuf_loopcnt" | "suspend_timeout" | "tcp_defer_accept" | "tcp_socket_buffer" | "tcp_keepalive"
        | "tcp_keepcnt" | "tcp_keepidle" | "tcp_keepintvl" | "tcp_user_timeout" => {
            "no equivalent: buffers and sockets are not tunable in pgshift"
        }
        "client_tls_protocols"
        | "client_tls_ciphers"
        | "client_tls_ecdhcurve"
        | "client_tls_dheparams"
        | "server_tls_protocols"
        | "server_tls_ciphers" => "not configurable: rustls offers TLS 1.2 and 1.3 with its safe cipher suites",
        "server_tls_cert_file" | "server_tls_key_file" => "pgshift presents no client certificate to PostgreSQL",
        "conffile" | "service_name" | "job_name" => "no equivalent",
        _ => return None,
    })
}
