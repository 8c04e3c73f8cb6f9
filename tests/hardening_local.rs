//! Hardening against another local user: what they can do to pgshift's files and channels.

mod common;

use common::proxy;
use pgshift::client::socket_file;

/// `unix_socket_dir` is often `/tmp` (PgBouncer's default, which the converter keeps), where
/// any local user may create files that pgshift cannot remove (the sticky bit). The upgrade
/// binds its new socket under a temporary name there; if that name can be predicted (it was
/// `..s.PGSQL.<port>.upgrade-<pid>`, and pids are sequential), a user who plants files at the
/// next pids makes every binary upgrade fail. A directory stands in for a file we cannot delete.
#[tokio::test]
async fn a_file_planted_at_a_predictable_temporary_name_does_not_block_the_socket_swap() {
    let dir = common::TempDir::new("hl-plant");
    let path = dir.join(".s.PGSQL.6432");
    let (_old, _old_file) = socket_file::bind(&path, 0o777).unwrap();
    let planted = dir.join(format!("..s.PGSQL.6432.upgrade-{}", std::process::id()));
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("x"), b"not removable").unwrap();
    let swapped = socket_file::bind_replacing(&path, 0o777);
    assert!(swapped.is_ok(), "a planted file blocked the upgrade's socket: {:?}", swapped.err());
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
}

/// The console answers to two database names, `pgbouncer` and `pgshift`. An hba file written
/// for PgBouncer (or by an operator who knows one name) keeps the console off the network with a
/// line for `pgbouncer`; the other name must not walk around it to a later `all` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hba_line_for_one_console_name_covers_the_other() {
    let dir = common::TempDir::new("hl-hba");
    for (named, asked) in [("pgbouncer", "pgshift"), ("pgshift", "pgbouncer")] {
        let file = dir.join(format!("hba-{named}.conf"));
        let rules = format!("host {named} all 0.0.0.0/0 reject\nhost all all 0.0.0.0/0 scram-sha-256\n");
        std::fs::write(&file, rules).unwrap();
        let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
        cfg.auth.auth_hba_file = file.display().to_string();
        let p = proxy::start(cfg).await;
        let port = proxy::port(&p);
        let got = common::try_connect(port, "app", "app", asked).await;
        let code = got.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
        assert_eq!(code.as_deref(), Some("28000"), "a {named} reject line let {asked} in");
        // The line for ordinary databases still applies.
        common::connect(port, "app", "app", "app").await;
    }
}
