//! The store-agnostic golden vectors (`tests/vectors/*.json`) and a runner that plays them
//! against any [`Backend`]: every store must give the same decisions.
//!
//! Steps pass their time explicitly (`Backend::execute(.., now)`), so a distributed backend
//! must be configured to use the caller's time when it runs them.
//!
//! ```
//! use tollgate::conformance::{load_vectors, run_case, vectors_dir};
//! use tollgate::store::{Store, memory::MemoryStore};
//! let files = load_vectors(&vectors_dir()).unwrap();
//! for file in &files {
//!     for case in &file.cases {
//!         let backend = MemoryStore::new().bind(&case.policy().unwrap()).unwrap();
//!         run_case(&backend, case, "doc").unwrap();
//!     }
//! }
//! ```

use crate::error::Error;
use crate::policy::{Policy, PolicySpec};
use crate::store::{Backend, Op};
use crate::Decision;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One vector file: the cases of one algorithm.
#[derive(Clone, Debug, Deserialize)]
pub struct VectorFile {
    /// The algorithm's name.
    pub algorithm: String,
    /// The cases.
    pub cases: Vec<Case>,
    /// The file it came from.
    #[serde(skip)]
    pub path: PathBuf,
}

/// A scripted sequence of operations on one policy.
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    /// Unique within its file.
    pub name: String,
    /// What it covers.
    #[serde(default)]
    pub description: String,
    /// The policy.
    pub policy: PolicySpec,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Case {
    /// The validated policy.
    pub fn policy(&self) -> Result<Policy, crate::QuotaError> {
        Policy::try_from(self.policy.clone())
    }
}

/// One operation and what it must return.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// Absolute time in µs.
    pub t: u64,
    /// `check`, `peek`, `refund` or `reset`.
    pub op: String,
    /// The key.
    pub key: String,
    /// The cost (check/peek) or amount (refund).
    #[serde(default)]
    pub cost: Option<u64>,
    /// The expected decision (check/peek).
    #[serde(default)]
    pub expect: Option<Expect>,
    /// The expected error: `cost_exceeds_capacity` or `invalid_cost`.
    #[serde(default)]
    pub expect_error: Option<String>,
}

/// An expected decision, in µs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Expect {
    /// Admitted.
    pub allowed: bool,
    /// Capacity of the binding rate.
    pub limit: u64,
    /// Remaining.
    pub remaining: u64,
    /// µs.
    pub retry_after: u64,
    /// µs.
    pub reset_after: u64,
    /// Index of the denying rate.
    pub denied_by: Option<usize>,
}

impl From<&Decision> for Expect {
    fn from(d: &Decision) -> Self {
        Expect {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after: d.retry_after.as_micros() as u64,
            reset_after: d.reset_after.as_micros() as u64,
            denied_by: d.denied_by,
        }
    }
}

/// The directory holding the vector files of this crate.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Loads every `*.json` file of `dir`, sorted by name.
pub fn load_vectors(dir: &Path) -> Result<Vec<VectorFile>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut file: VectorFile =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            file.path = path;
            Ok(file)
        })
        .collect()
}

/// Plays `case` against `backend` (bound to the case's policy), prefixing every key with
/// `key_prefix` so runs on a shared store do not collide. Returns the first mismatch.
pub fn run_case<B: Backend>(backend: &B, case: &Case, key_prefix: &str) -> Result<(), String> {
    for (i, step) in case.steps.iter().enumerate() {
        let key = format!("{key_prefix}{}", step.key);
        let op = step_op(step).map_err(|e| format!("{}: step {i}: {e}", case.name))?;
        let got = backend.execute(&key, op, step.t);
        check_step(case, i, step, got)?;
    }
    Ok(())
}

/// Like [`run_case`], through the backend's async path.
pub async fn run_case_async<B: Backend>(
    backend: &B,
    case: &Case,
    key_prefix: &str,
) -> Result<(), String> {
    for (i, step) in case.steps.iter().enumerate() {
        let key = format!("{key_prefix}{}", step.key);
        let op = step_op(step).map_err(|e| format!("{}: step {i}: {e}", case.name))?;
        let got = backend.execute_async(&key, op, step.t).await;
        check_step(case, i, step, got)?;
    }
    Ok(())
}

fn step_op(step: &Step) -> Result<Op, String> {
    let cost = || {
        step.cost
            .ok_or_else(|| format!("op {} needs a cost", step.op))
    };
    Ok(match step.op.as_str() {
        "check" => Op::Check(cost()?),
        "peek" => Op::Peek(cost()?),
        "refund" => Op::Refund(cost()?),
        "reset" => Op::Reset,
        other => return Err(format!("unknown op {other:?}")),
    })
}

fn check_step(
    case: &Case,
    i: usize,
    step: &Step,
    got: Result<Option<Decision>, Error>,
) -> Result<(), String> {
    let at = || {
        format!(
            "{}: step {i} ({} {} cost {:?} at t={})",
            case.name, step.op, step.key, step.cost, step.t
        )
    };
    match (&step.expect_error, got) {
        (Some(expected), Err(e)) => {
            let name = match e {
                Error::CostExceedsCapacity { .. } => "cost_exceeds_capacity",
                Error::InvalidCost => "invalid_cost",
                _ => "other",
            };
            if name != expected {
                return Err(format!("{}: expected error {expected}, got {e}", at()));
            }
        }
        (Some(expected), Ok(d)) => {
            return Err(format!("{}: expected error {expected}, got {d:?}", at()));
        }
        (None, Err(e)) => return Err(format!("{}: unexpected error {e}", at())),
        (None, Ok(d)) => match (&step.expect, d) {
            (Some(want), Some(d)) => {
                let got = Expect::from(&d);
                if &got != want {
                    return Err(format!(
                        "{}:\n  expected {want:?}\n  got      {got:?}",
                        at()
                    ));
                }
            }
            (Some(want), None) => return Err(format!("{}: expected {want:?}, got nothing", at())),
            (None, _) => {}
        },
    }
    Ok(())
}

pub mod log;
pub mod multi;
pub mod sharing;
