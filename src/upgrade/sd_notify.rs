//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`. After a binary
//! upgrade the new process also sends `MAINPID=`, so that systemd follows it as the service's main
//! process (with `NotifyAccess=all`) instead of deeming the service stopped when the old one exits.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd, if it started us with a notify socket. Errors are
/// logged, never fatal: outside systemd there is nothing to tell.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): '@' stands for the leading NUL.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), std::path::Path::new(path))?;
        }
    }
    Ok(())
}

/// What a process tells systemd once it listens: ready, and after an upgrade, its own pid as
/// the service's main process.
pub fn ready(upgraded: bool) {
    if upgraded {
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        notify("READY=1");
    }
}
