//! Spawning server processes that cannot outlive the test process.
//!
//! A guard's `Drop` kills its server, including when a test panics. That is
//! not enough on its own: a test binary killed by a timeout, a `panic=abort`,
//! or a server kept in a `static` (statics are never dropped) would leave
//! servers running. On Linux every server is therefore started with
//! `PR_SET_PDEATHSIG = SIGKILL`.
//!
//! The "parent death" signal fires when the *thread* that forked the child
//! exits, not the process. Test threads come and go (a server started by one
//! test and shared through a `static` would die with that test's thread), so
//! all spawns go through one dedicated thread that lives as long as the
//! process.

use std::io;
use std::process::{Child, Command};

/// Spawns `cmd`; on Linux the child is killed when this process dies.
pub(crate) fn spawn_bound(cmd: Command) -> io::Result<Child> {
    imp::spawn_bound(cmd)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::raw::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    use std::thread;

    extern "C" {
        fn prctl(option: c_int, ...) -> c_int;
        fn getppid() -> c_int;
    }

    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    const ESRCH: i32 = 3;

    type Job = (Command, mpsc::Sender<io::Result<Child>>);

    fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
        static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
        SPAWNER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            thread::Builder::new()
                .name("tollgate-testkit-spawner".into())
                .spawn(move || {
                    // Never ends: the sender lives in a static. The thread
                    // ends with the process, which is when the children must
                    // die.
                    for (cmd, reply) in rx {
                        let _ = reply.send(spawn_here(cmd));
                    }
                })
                .expect("cannot start the tollgate-testkit spawner thread");
            Mutex::new(tx)
        })
    }

    pub(super) fn spawn_bound(cmd: Command) -> io::Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((cmd, reply_tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread did not answer"))?
    }

    fn spawn_here(mut cmd: Command) -> io::Result<Child> {
        let parent = std::process::id() as c_int;
        // SAFETY: the closure runs in the forked child before exec and only
        // makes two async-signal-safe system calls (prctl, getppid); it does
        // not allocate (from_raw_os_error / last_os_error do not allocate).
        unsafe {
            cmd.pre_exec(move || {
                if prctl(
                    PR_SET_PDEATHSIG,
                    SIGKILL,
                    0 as c_ulong,
                    0 as c_ulong,
                    0 as c_ulong,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if getppid() != parent {
                    return Err(io::Error::from_raw_os_error(ESRCH));
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::process::{Child, Command};

    pub(super) fn spawn_bound(mut cmd: Command) -> io::Result<Child> {
        cmd.spawn()
    }
}
