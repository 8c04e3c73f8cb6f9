//! Starting the new binary: the path and arguments this process was started with, the handover
//! socket as its standard input, and nothing that ties its life to ours.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::UpgradeError;

/// Tells a starting pgshift that its standard input is the handover socket of the process it
/// takes over from. Read and removed at startup, so no process it starts later sees it.
pub const ENV: &str = "PGSHIFT_UPGRADE";
/// The value [`ENV`] has (the only one understood).
const ON_STDIN: &str = "stdin";

/// How to start this binary again, resolved at startup: by then the file at our path may have
/// been replaced by the new version (that is the point), and `/proc/self/exe` would name the
/// old, deleted file.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary's path as started (`argv[0]` made absolute; through `PATH`, the resolved path).
    pub exe: PathBuf,
    /// The arguments after it.
    pub args: Vec<OsString>,
}

impl Launch {
    /// The path and arguments of this process.
    pub fn of_this_process() -> Launch {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from);
        let args: Vec<OsString> = argv.collect();
        // argv[0] with a slash names the file the operator (or the unit file) runs, symlinks
        // kept, so a symlink flipped to a new release starts the new release; a bare name was
        // found on PATH, which current_exe resolves.
        let exe = match argv0 {
            Some(p) if p.components().count() > 1 => match std::env::current_dir() {
                Ok(cwd) if p.is_relative() => cwd.join(p),
                _ => p,
            },
            _ => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pgshift")),
        };
        Launch { exe, args }
    }

    /// Starts the binary with `channel` as its standard input. The child is not killed when this
    /// process exits (a plain `std::process::Child`, not a tokio child with kill_on_drop), stays
    /// in our process group and cgroup (so a service manager stopping the service stops it), and
    /// shares our standard output and error.
    pub fn spawn(&self, channel: OwnedFd) -> Result<Child, UpgradeError> {
        Command::new(&self.exe)
            .args(&self.args)
            .env(ENV, ON_STDIN)
            .stdin(Stdio::from(channel))
            .spawn()
            .map_err(|source| UpgradeError::Spawn { path: self.exe.display().to_string(), source })
    }
}

/// In a process started by [`Launch::spawn`]: takes the handover socket from standard input
/// (standard input becomes /dev/null) and clears [`ENV`]. Call before any thread starts.
/// `Ok(None)` in a process started any other way.
pub fn take_inherited() -> Result<Option<OwnedFd>, UpgradeError> {
    let Some(v) = std::env::var_os(ENV) else { return Ok(None) };
    std::env::remove_var(ENV);
    if v != ON_STDIN {
        return Err(UpgradeError::Protocol("PGSHIFT_UPGRADE is set to something other than \"stdin\""));
    }
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| UpgradeError::Channel(e.into()))?;
    Ok(Some(fd))
}
