//! [`TempDir`]: a private temporary directory, removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh directory under the system's temporary directory, named
/// `tollgate-<prefix>-<pid>-…` and removed with everything in it when dropped. Directories
/// of test processes that died without dropping theirs are swept by the next one.
///
/// ```
/// let dir = tollgate_testkit::TempDir::new("doc").unwrap();
/// std::fs::write(dir.path().join("a.toml"), "x = 1").unwrap();
/// let path = dir.path().to_path_buf();
/// drop(dir);
/// assert!(!path.exists());
/// ```
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory; the error names the base directory and the cause.
    ///
    /// ```
    /// let dir = tollgate_testkit::TempDir::new("doc-new").unwrap();
    /// assert!(dir.path().is_dir());
    /// ```
    pub fn new(prefix: &str) -> Result<TempDir, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        sweep_once(&base);
        let mut last_err = None;
        for _ in 0..100 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "tollgate-{prefix}-{}-{n}-{nanos:08x}",
                std::process::id()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(format!(
                        "cannot create a temporary directory in {}: {e}",
                        base.display()
                    ))
                }
            }
        }
        Err(format!(
            "cannot create a unique temporary directory in {}: {last_err:?}",
            base.display()
        ))
    }

    /// The directory.
    ///
    /// ```
    /// let dir = tollgate_testkit::TempDir::new("doc-path").unwrap();
    /// assert!(dir.path().starts_with(std::env::temp_dir()));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the directories left behind by test processes that died without
/// dropping their guards (killed, aborted, or servers kept in a `static`).
/// Their servers are already gone (see `process.rs`); only the directories
/// (logs, `nodes-*.conf`) remain. Runs once per process, Linux only (it asks
/// `/proc` whether the owning pid still lives).
fn sweep_once(base: &Path) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The pid in `tollgate-<prefix>-<pid>-<n>-<nanos>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("tollgate-")?;
    let mut parts = rest.rsplit('-');
    let nanos = parts.next()?;
    let n = parts.next()?;
    let pid = parts.next()?;
    if u32::from_str_radix(nanos, 16).is_err() || n.parse::<u64>().is_err() {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner_pid() {
        assert_eq!(owner_pid("tollgate-redis-8615-0-35e3719b"), Some(8615));
        assert_eq!(owner_pid("tollgate-redis-node-8615-3-38700fb7"), Some(8615));
        assert_eq!(
            owner_pid("tollgate-server-config-bad-rates-77-0-0a1b2c3d"),
            Some(77)
        );
        assert_eq!(owner_pid("tollgate-py-cluster-1qy0mhrm"), None);
        assert_eq!(owner_pid("tollgate-pg.abc"), None);
        assert_eq!(owner_pid("tollgate-redis-x"), None);
        assert_eq!(owner_pid("other-redis-1-2-3"), None);
    }

    #[test]
    fn creates_and_removes() {
        let dir = TempDir::new("redis-selftest").unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        std::fs::write(path.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
