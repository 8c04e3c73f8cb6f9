//! The Unix-domain socket of `[proxy] unix_socket_dir`: bound in place of a stale file, given
//! `unix_socket_mode`, and removed when pgshift stops.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::net::UnixListener;

/// The socket file this process bound; removes it (once) when told to or when dropped.
#[derive(Debug)]
pub struct SocketFile {
    /// The path and the file's identity once bound. The identity keeps a later process's
    /// socket at the same path from being removed by this one.
    bound: Mutex<Option<(PathBuf, FileId)>>,
}

impl SocketFile {
    /// Removes the socket file if it is still the one this process bound; later calls do nothing.
    pub fn remove(&self) {
        let taken = self.bound.lock().map(|mut b| b.take()).unwrap_or_else(|e| e.into_inner().take());
        let Some((path, id)) = taken else { return };
        if std::fs::symlink_metadata(&path).is_ok_and(|m| FileId::of(&m) == id) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove the Unix socket: {e}");
            }
        }
    }
}

/// Device and inode, with the change time: an inode number freed by removing a file is often
/// given to the next file made, so the number alone does not tell two sockets apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId(m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Binds a listener at `path` with permissions `mode`. A socket file left by a process that is
/// gone (nothing accepts on it) is replaced; one a live process listens on is an error
/// (`AddrInUse`), and so is a path that exists but is not a socket (it is not ours to delete).
pub fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    remove_if_stale(path)?;
    let listener = UnixListener::bind(path)?;
    // Set after bind, as PgBouncer and PostgreSQL do; until then the umask's mode applies.
    let set = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    let id = match set.and_then(|()| std::fs::symlink_metadata(path)) {
        Ok(m) => FileId::of(&m),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    Ok((listener, SocketFile { bound: Mutex::new(Some((path.to_path_buf(), id))) }))
}

/// Binds a listener at `path` in place of the socket a live process (the one this process
/// upgrades) listens on: bound under a temporary name beside it, given `mode`, then renamed over
/// `path`, so a client connecting at any moment finds one of the two listening. The old
/// process's socket keeps the clients already queued on it, and its own removal at exit leaves
/// this file alone (the identity check in [`SocketFile::remove`]).
///
/// The temporary name is random, not our pid: the directory may be world-writable
/// (`/tmp`, with the sticky bit), where another user could plant files at predictable names that
/// this process cannot remove, and so make every upgrade fail to bind.
pub fn bind_replacing(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // 48 random bits, and no longer than the pid-named temporary it replaces (paths are bounded).
    let nonce = rand::random::<u64>() >> 16;
    let temp = path.with_file_name(format!(".{name}.up-{nonce:012x}"));
    let listener = UnixListener::bind(&temp)?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&temp, path))
        .and_then(|()| std::fs::symlink_metadata(path).map(|m| FileId::of(&m)));
    match placed {
        Ok(id) => Ok((listener, SocketFile { bound: Mutex::new(Some((path.to_path_buf(), id))) })),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Deletes the file at `path` if it is a socket nobody listens on.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists and is not a socket"));
    }
    // A blocking connect to a local socket answers at once: accepted, or refused when no one listens.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "in use: another process listens on this socket")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale Unix socket left by a process that is gone");
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own (short: socket paths are bounded), removed when
    /// dropped, a failed assertion included.
    struct Dir(PathBuf);

    impl std::ops::Deref for Dir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("pgshift-sf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_refuses_a_live_one_and_removes_its_own() {
        let dir = dir("stale");
        let path = dir.join(".s.PGSQL.5");
        // A stale socket: bound, then its listener closed without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (live, file) = bind(&path, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        let e = bind(&path, 0o777).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(live);
        drop(file);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(bind(&path, 0o777).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    #[tokio::test]
    async fn leaves_a_successor_socket_alone() {
        let dir = dir("successor");
        let path = dir.join(".s.PGSQL.6");
        let (l, file) = bind(&path, 0o777).unwrap();
        drop(l);
        // Another process replaced the stale file with its own socket (made while the first
        // still existed, so it is surely another file, not a reused inode).
        let _other = std::os::unix::net::UnixListener::bind(dir.join("other")).unwrap();
        std::fs::rename(dir.join("other"), &path).unwrap();
        file.remove();
        assert!(path.exists());
    }
}
