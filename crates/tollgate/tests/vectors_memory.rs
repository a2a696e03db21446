//! The golden vectors against the in-memory store (keyed and, via a second run, fresh tables).

use tollgate::conformance::{load_vectors, run_case, run_case_async, vectors_dir};
use tollgate::store::{memory::MemoryStore, Store};
use tollgate::Algorithm;

#[test]
fn every_algorithm_has_vectors_and_memory_agrees_with_all_of_them() {
    let files = load_vectors(&vectors_dir()).expect("vector files load");
    for algorithm in Algorithm::ALL {
        assert!(
            files
                .iter()
                .any(|f| f.algorithm == algorithm.name() && !f.cases.is_empty()),
            "no vectors for {algorithm}"
        );
    }
    let mut failures = Vec::new();
    let mut steps = 0;
    for file in &files {
        for case in &file.cases {
            let policy = case
                .policy()
                .unwrap_or_else(|e| panic!("{}: bad policy: {e}", case.name));
            assert_eq!(policy.algorithm().name(), file.algorithm, "{}", case.name);
            let backend = MemoryStore::new().bind(&policy).unwrap();
            steps += case.steps.len();
            if let Err(e) = run_case(&backend, case, "") {
                failures.push(format!("{}: {e}", file.path.display()));
            }
        }
    }
    assert!(steps >= 100, "only {steps} steps");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_async_path_gives_the_same_decisions() {
    let files = load_vectors(&vectors_dir()).unwrap();
    for file in &files {
        for case in &file.cases {
            let backend = MemoryStore::new().bind(&case.policy().unwrap()).unwrap();
            run_case_async(&backend, case, "async:").await.unwrap();
        }
    }
}
