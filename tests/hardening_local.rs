//! Hardening against another local user: what they can do to pgshift's files and channels.

mod common;

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

