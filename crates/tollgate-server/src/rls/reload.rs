//! Loading the configuration directory, and reloading it when it changes.
//!
//! Every `*.yaml` / `*.yml` file of the directory (not hidden, not in subdirectories) is one
//! domain. The directory is read again every poll interval; when the names or contents of its
//! files changed, the whole set is parsed and compiled, and only a set that is entirely valid
//! replaces the rules in use (requests in flight finish on the rules they started with; new
//! requests see the new rules at once). An invalid set is logged with the file, the path in
//! it and the problem, counted in `tollgate_rls_config_reloads_total{outcome="error"}`, and
//! the last good rules stay in force.

use super::rules::Rules;
use super::yaml::{parse_domain, RlsConfigError};
use crate::app::App;
use parking_lot::RwLock;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The files of a configuration directory, sorted by name: `(file name, contents)`.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, RlsConfigError> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| RlsConfigError::new(&shown, "", format!("cannot read the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            RlsConfigError::new(&shown, "", format!("cannot read the directory: {e}"))
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !is_yaml {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (a directory swapped by a symlink, as Kubernetes ConfigMaps do).
        if !path.is_file() {
            continue;
        }
        let shown_file = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| RlsConfigError::new(&shown_file, "", format!("cannot read: {e}")))?;
        files.push((shown_file, text));
    }
    files.sort();
    Ok(files)
}

fn fingerprint(files: &[(String, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

fn compile(app: &App, files: &[(String, String)]) -> Result<Rules, RlsConfigError> {
    let mut specs = Vec::with_capacity(files.len());
    for (name, text) in files {
        specs.push(parse_domain(name, text)?);
    }
    Rules::compile(app, specs)
}

/// Loads and compiles every domain file of `dir`.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("tollgate-rls-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("edge.yaml"), "domain: edge\ndescriptors:\n  - key: path\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
/// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
/// let rules = tollgate_server::rls::load_dir(&app, &dir).unwrap();
/// assert!(rules.has_domain("edge"));
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn load_dir(app: &App, dir: &Path) -> Result<Rules, RlsConfigError> {
    compile(app, &read_dir(dir)?)
}

/// The rules in use, swapped whole on reload.
pub(crate) type Current = Arc<RwLock<Arc<Rules>>>;

/// Polls `dir` every `interval` until `shutdown`, replacing `current` with every valid change.
pub(crate) async fn watch_dir(
    app: Arc<App>,
    dir: PathBuf,
    interval: Duration,
    current: Current,
    initial: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let ok = metrics::counter!("tollgate_rls_config_reloads_total", "outcome" => "ok");
    let failed = metrics::counter!("tollgate_rls_config_reloads_total", "outcome" => "error");
    let mut seen = initial;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let d = dir.clone();
        let read = tokio::task::spawn_blocking(move || read_dir(&d)).await;
        let files = match read {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                let fp = fingerprint(&[(e.to_string(), String::new())]);
                if fp != seen {
                    seen = fp;
                    failed.increment(1);
                    tracing::error!(
                        "RLS configuration not reloaded, keeping the last good one: {e}"
                    );
                }
                continue;
            }
            Err(_) => continue,
        };
        let fp = fingerprint(&files);
        if fp == seen {
            continue;
        }
        seen = fp;
        match compile(&app, &files) {
            Ok(rules) => {
                *current.write() = Arc::new(rules);
                ok.increment(1);
                tracing::info!(
                    "RLS configuration reloaded from {} ({} files)",
                    dir.display(),
                    files.len()
                );
            }
            Err(e) => {
                failed.increment(1);
                tracing::error!("RLS configuration not reloaded, keeping the last good one: {e}");
            }
        }
    }
}

/// Loads `dir` for the first time: the rules and the fingerprint of what was read.
pub(crate) fn initial_load(app: &App, dir: &Path) -> Result<(Rules, u64), RlsConfigError> {
    let files = read_dir(dir)?;
    let rules = compile(app, &files)?;
    Ok((rules, fingerprint(&files)))
}
