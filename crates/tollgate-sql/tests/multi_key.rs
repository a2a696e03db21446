//! Multi-key all-or-nothing (`MultiBackend::execute_all`, what `Limiter::check_all` runs) on a real PostgreSQL (DATABASE_URL;
//! CI fails when it is missing) and real SQLite files: a denial leaves every key uncharged,
//! mixed policies and algorithms decide like the memory store, the combined decision
//! follows the multi-rate rule across keys, clear errors. The multi-process concurrency
//! tests are in `tests/processes.rs`.

use std::path::PathBuf;
use std::time::Duration;
use tollgate::store::multi::{MultiBackend, MultiOp};
use tollgate::store::{memory::MemoryStore, Backend, Op, Store};
use tollgate::time::{Clock, SystemClock};
use tollgate::{parse_rates, Decision, Error, Policy, Rate};
use tollgate_sql::{KeyCheck, MultiDecision, PgBackend, PgStore, SqliteBackend, SqliteStore};

/// 2027-01-15T08:00:00Z in µs: a multiple of one hour, so clock-aligned windows start here.
const T0: u64 = 1_800_000_000_000_000;
const SEC: u64 = 1_000_000;

/// A PostgreSQL table unique to this test and this run, dropped (with its functions) on drop.
struct PgTable {
    url: String,
    name: String,
}

impl PgTable {
    fn new(test: &str) -> Option<PgTable> {
        let url = tollgate_testkit::require_postgres()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("tgm_{test}_{}_{nanos}", std::process::id());
        Some(PgTable { url, name })
    }

    fn store(&self, caller_time: bool) -> PgStore {
        let store = PgStore::builder(&self.url)
            .table(&self.name)
            .unwrap()
            .max_connections(4)
            .caller_time(caller_time)
            .connect()
            .unwrap();
        store.migrate().unwrap();
        store
    }
}

impl Drop for PgTable {
    fn drop(&mut self) {
        if let Ok(Ok(store)) = PgStore::builder(&self.url)
            .table(&self.name)
            .map(|b| b.connect())
        {
            let _ = store.drop_schema();
        }
    }
}

/// A SQLite file in a fresh directory, removed on drop.
struct SqliteFile(PathBuf);

impl SqliteFile {
    fn new(test: &str) -> SqliteFile {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-sql-multi-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        SqliteFile(dir)
    }

    fn store(&self) -> SqliteStore {
        let store = SqliteStore::open(self.0.join("limits.db")).unwrap();
        store.ensure_schema().unwrap();
        store
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two SQL stores behind one interface, so every scenario runs on both.
trait MultiStore {
    type B: Backend;
    fn bind_policy(&self, policy: &Policy) -> Self::B;
    fn bind_scoped(&self, scope: &str, policy: &Policy) -> Self::B;
    fn check_all_at(
        &self,
        checks: &[KeyCheck<'_, Self::B>],
        now: u64,
    ) -> Result<MultiDecision, Error>;
    fn peek_all_at(
        &self,
        checks: &[KeyCheck<'_, Self::B>],
        now: u64,
    ) -> Result<MultiDecision, Error>;
}

impl MultiStore for PgStore {
    type B = PgBackend;
    fn bind_policy(&self, policy: &Policy) -> PgBackend {
        self.bind(policy).unwrap()
    }
    fn bind_scoped(&self, scope: &str, policy: &Policy) -> PgBackend {
        self.scope(scope).bind(policy).unwrap()
    }
    fn check_all_at(
        &self,
        c: &[KeyCheck<'_, PgBackend>],
        now: u64,
    ) -> Result<MultiDecision, Error> {
        PgBackend::execute_all(c, MultiOp::Check, now)
    }
    fn peek_all_at(&self, c: &[KeyCheck<'_, PgBackend>], now: u64) -> Result<MultiDecision, Error> {
        PgBackend::execute_all(c, MultiOp::Peek, now)
    }
}

impl MultiStore for SqliteStore {
    type B = SqliteBackend;
    fn bind_policy(&self, policy: &Policy) -> SqliteBackend {
        self.bind(policy).unwrap()
    }
    fn bind_scoped(&self, scope: &str, policy: &Policy) -> SqliteBackend {
        self.scope(scope).bind(policy).unwrap()
    }
    fn check_all_at(
        &self,
        c: &[KeyCheck<'_, SqliteBackend>],
        now: u64,
    ) -> Result<MultiDecision, Error> {
        SqliteBackend::execute_all(c, MultiOp::Check, now)
    }
    fn peek_all_at(
        &self,
        c: &[KeyCheck<'_, SqliteBackend>],
        now: u64,
    ) -> Result<MultiDecision, Error> {
        SqliteBackend::execute_all(c, MultiOp::Peek, now)
    }
}

/// The async multi-key check of the core capability (what `Limiter::check_all_async` runs).
async fn check_at_async<B: MultiBackend>(
    checks: &[KeyCheck<'_, B>],
    now: u64,
) -> Result<MultiDecision, Error> {
    B::execute_all_async(checks, MultiOp::Check, now).await
}

/// The async multi-key peek of the core capability.
async fn peek_at_async<B: MultiBackend>(
    checks: &[KeyCheck<'_, B>],
    now: u64,
) -> Result<MultiDecision, Error> {
    B::execute_all_async(checks, MultiOp::Peek, now).await
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

// ---------------------------------------------------------------------------------------
// A denial by the second key leaves the first uncharged.

fn denial_by_the_second_key_charges_nothing<S: MultiStore>(store: &S) {
    // per user: 1/min with a burst of 3 (GCRA: T = 60 s, tau = 180 s);
    // global: 2 per minute in a fixed window.
    let user = store
        .bind_policy(&Policy::gcra(Rate::per_minute(1).unwrap().with_burst(3).unwrap()).unwrap());
    let global = store.bind_policy(&Policy::fixed_window(Rate::per_minute(2).unwrap()).unwrap());
    let both = [
        KeyCheck::new(&user, "user:alice", 1),
        KeyCheck::new(&global, "global", 1),
    ];
    for expected_remaining in [2, 1] {
        let d = store.check_all_at(&both, T0).unwrap();
        assert!(d.allowed && d.binding().is_none());
        assert_eq!(d.decisions[0].remaining, expected_remaining);
    }
    // alice has 1 unit left: a peek of 1 admits it, leaving 0
    let before = store.peek_all_at(&both[..1], T0).unwrap();
    assert!(before.allowed);
    assert_eq!(before.decisions[0].remaining, 0);

    // The global window is full: the call is denied by key 1, and alice is not charged.
    let d = store.check_all_at(&both, T0 + SEC).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.binding().unwrap().0, 1);
    // alice alone would have admitted: her own decision says so, computed as if charged
    assert!(d.decisions[0].allowed);
    assert_eq!(d.decisions[0].remaining, 0);
    assert_eq!(us(d.decisions[0].reset_after), 180 * SEC - SEC);
    assert!(!d.decisions[1].allowed);
    assert_eq!(d.decisions[1].denied_by, Some(0));
    // the binding key: the global window, its limit/remaining/retry and its own rate index
    assert_eq!(
        *d.binding().unwrap().1,
        Decision::from_parts(false, 2, 0, 59 * SEC, 59 * SEC, Some(0))
    );

    // Peek shows alice exactly as before the denied call.
    let after = store.peek_all_at(&both[..1], T0).unwrap();
    assert_eq!(after.decisions, before.decisions);
    // ...and a second denied call charges nothing either.
    let again = store.check_all_at(&both, T0 + 2 * SEC).unwrap();
    assert!(!again.allowed);
    assert_eq!(
        store.peek_all_at(&both[..1], T0).unwrap().decisions,
        before.decisions
    );

    // Order does not matter: the same call with the keys swapped is denied by key 0.
    let swapped = [both[1], both[0]];
    let d = store.check_all_at(&swapped, T0 + 3 * SEC).unwrap();
    assert_eq!(
        (d.allowed, d.binding().map(|(key, _)| key)),
        (false, Some(0))
    );

    // The next window admits both again, and alice is charged once more.
    let d = store.check_all_at(&both, T0 + 60 * SEC).unwrap();
    assert!(d.allowed);
    // alice: tat was T0 + 120 s; at T0 + 60 s it becomes T0 + 180 s: remaining 1
    assert_eq!(d.decisions[0].remaining, 1);
    let (_, tightest) = d.tightest().unwrap();
    assert_eq!((tightest.remaining, tightest.limit), (1, 3));

    // A peek that admits charges nothing: two peeks see the same.
    let p = store.peek_all_at(&both, T0 + 61 * SEC).unwrap();
    assert!(p.allowed);
    assert_eq!(store.peek_all_at(&both, T0 + 61 * SEC).unwrap(), p);
}

#[test]
fn postgres_denial_by_the_second_key_charges_nothing() {
    let Some(table) = PgTable::new("deny") else {
        return;
    };
    denial_by_the_second_key_charges_nothing(&table.store(true));
}

#[test]
fn sqlite_denial_by_the_second_key_charges_nothing() {
    let file = SqliteFile::new("deny");
    denial_by_the_second_key_charges_nothing(&file.store());
    denial_by_the_second_key_charges_nothing(&{
        let s = SqliteStore::in_memory().unwrap();
        s.ensure_schema().unwrap();
        s
    });
}

// ---------------------------------------------------------------------------------------
// Mixed policies and algorithms: every key decides exactly as the memory store would.

fn policies(with_empty_bucket: bool) -> Vec<Policy> {
    let mut p = vec![
        Policy::gcra(Rate::per_second(10).unwrap().with_burst(4).unwrap()).unwrap(),
        Policy::new(
            tollgate::Algorithm::Gcra,
            parse_rates("5/s burst 3;20/min").unwrap(),
        )
        .unwrap(),
        Policy::token_bucket(6, 2, Duration::from_millis(700)).unwrap(),
        Policy::fixed_window(Rate::per_second(5).unwrap()).unwrap(),
        Policy::sliding_window(Rate::per_second(6).unwrap()).unwrap(),
        Policy::sliding_log(parse_rates("4/s;9/5s").unwrap()).unwrap(),
    ];
    if with_empty_bucket {
        // starts empty: a denied multi-key check still persists its refill (the settled
        // state), as a single-key check does — not observable through the memory store's
        // API, so this policy is only compared between the two SQL stores
        p.push(
            Policy::token_bucket(3, 1, Duration::from_millis(400))
                .unwrap()
                .with_initial_tokens(0)
                .unwrap(),
        );
    }
    p
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One step of a random sequence: which (policy, user key) pairs, with which costs, at what
/// time, check or peek.
struct Step {
    keys: Vec<(usize, String, u64)>,
    now: u64,
    check: bool,
}

fn random_steps(seed: u64, policies: &[Policy], count: usize) -> Vec<Step> {
    let mut rng = Rng(seed);
    let mut now = T0 + 123_456;
    let mut steps = Vec::with_capacity(count);
    for _ in 0..count {
        // mostly forwards, sometimes a stale (earlier) time as another host would present
        if rng.below(8) == 0 {
            now -= rng.below(80_000);
        } else {
            now += rng.below(260_000);
        }
        let mut keys: Vec<(usize, String, u64)> = Vec::new();
        let wanted = 1 + rng.below(4) as usize;
        while keys.len() < wanted {
            let p = rng.below(policies.len() as u64) as usize;
            // the policy in the key: two policies of one algorithm must not share a row
            let key = format!("p{p}-k{}", rng.below(2));
            if keys.iter().any(|(q, k, _)| *q == p && *k == key) {
                continue;
            }
            let capacity = policies[p].rates().iter().map(|r| r.burst()).min().unwrap();
            let cost = 1 + rng.below(capacity.min(3));
            keys.push((p, key, cost));
        }
        steps.push(Step {
            keys,
            now,
            check: rng.below(5) != 0,
        });
    }
    steps
}

fn play<S: MultiStore>(store: &S, policies: &[Policy], steps: &[Step]) -> Vec<MultiDecision> {
    let backends: Vec<S::B> = policies.iter().map(|p| store.bind_policy(p)).collect();
    steps
        .iter()
        .map(|step| {
            let checks: Vec<KeyCheck<'_, S::B>> = step
                .keys
                .iter()
                .map(|(p, key, cost)| KeyCheck::new(&backends[*p], key.as_str(), *cost))
                .collect();
            if step.check {
                store.check_all_at(&checks, step.now).unwrap()
            } else {
                store.peek_all_at(&checks, step.now).unwrap()
            }
        })
        .collect()
}

/// The reference: each key's own decision is a memory-store peek; the call is allowed iff
/// all keys allow, and only then is every key charged (memory-store checks).
fn reference(policies: &[Policy], steps: &[Step]) -> Vec<(bool, Vec<Decision>)> {
    let memory = MemoryStore::new();
    let backends: Vec<_> = policies.iter().map(|p| memory.bind(p).unwrap()).collect();
    steps
        .iter()
        .map(|step| {
            let decisions: Vec<Decision> = step
                .keys
                .iter()
                .map(|(p, key, cost)| {
                    backends[*p]
                        .execute(key, Op::Peek(*cost), step.now)
                        .unwrap()
                        .unwrap()
                })
                .collect();
            let allowed = decisions.iter().all(|d| d.allowed);
            if step.check && allowed {
                for (p, key, cost) in &step.keys {
                    let d = backends[*p]
                        .execute(key, Op::Check(*cost), step.now)
                        .unwrap()
                        .unwrap();
                    assert!(d.allowed, "reference: a peeked admission was denied");
                }
            }
            (allowed, decisions)
        })
        .collect()
}

#[test]
fn mixed_policies_decide_like_the_memory_store_on_both_stores() {
    let policies = policies(false);
    let steps = random_steps(0x9e37_79b9_7f4a_7c15, &policies, 300);
    let expected = reference(&policies, &steps);
    let denied = expected.iter().filter(|(a, _)| !a).count();
    assert!(
        denied > 30 && denied < 270,
        "the sequence should mix admissions and denials ({denied} denied of 300)"
    );
    let file = SqliteFile::new("mixed");
    let sqlite = play(&file.store(), &policies, &steps);
    let postgres = PgTable::new("mixed").map(|t| play(&t.store(true), &policies, &steps));
    for (i, (allowed, decisions)) in expected.iter().enumerate() {
        let sq = &sqlite[i];
        assert_eq!(
            (sq.allowed, &sq.decisions),
            (*allowed, decisions),
            "SQLite, step {i}"
        );
        if let Some(pg) = &postgres {
            assert_eq!(&pg[i], sq, "PostgreSQL vs SQLite, step {i}");
        }
    }
}

#[test]
fn postgres_and_sqlite_agree_with_an_empty_token_bucket() {
    let Some(table) = PgTable::new("agree") else {
        return;
    };
    let policies = policies(true);
    let steps = random_steps(0x1234_5678_9abc_def1, &policies, 300);
    let file = SqliteFile::new("agree");
    let sqlite = play(&file.store(), &policies, &steps);
    let postgres = play(&table.store(true), &policies, &steps);
    for (i, (pg, sq)) in postgres.iter().zip(&sqlite).enumerate() {
        assert_eq!(pg, sq, "step {i}");
    }
    assert!(sqlite.iter().any(|d| d.allowed) && sqlite.iter().any(|d| !d.allowed));
}

#[test]
fn a_denied_call_keeps_a_token_buckets_refill_as_a_single_key_check_does() {
    let file = SqliteFile::new("settle");
    let store = file.store();
    // an empty bucket (1 token per second, capacity 2) and a window that is full
    let bucket = store
        .bind(
            &Policy::token_bucket(2, 1, Duration::from_secs(1))
                .unwrap()
                .with_initial_tokens(0)
                .unwrap(),
        )
        .unwrap();
    let window = store
        .bind(&Policy::fixed_window(Rate::per_minute(1).unwrap()).unwrap())
        .unwrap();
    assert!(
        window
            .execute("w", Op::Check(1), T0)
            .unwrap()
            .unwrap()
            .allowed
    );
    let d = store
        .check_all_at(
            &[
                KeyCheck::new(&bucket, "b", 1),
                KeyCheck::new(&window, "w", 1),
            ],
            T0,
        )
        .unwrap();
    assert!(!d.allowed);
    // the bucket was created at T0 (its refill clock started), so at T0 + 1 s it holds 1
    let p = bucket.execute("b", Op::Peek(1), T0 + SEC).unwrap().unwrap();
    assert!(p.allowed);
    assert_eq!(store.row_count().unwrap(), 2);
}

// ---------------------------------------------------------------------------------------
// Errors.

fn errors_are_clear<S: MultiStore>(store: &S, other: &S) {
    let user = store.bind_policy(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap());
    let ip = store.bind_policy(&Policy::gcra(Rate::per_minute(50).unwrap()).unwrap());
    let foreign = other.bind_policy(&Policy::gcra(Rate::per_minute(5).unwrap()).unwrap());
    let invalid_key = |r: Result<MultiDecision, Error>, needle: &str| match r {
        Err(Error::InvalidKey { reason }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("expected InvalidKey ({needle}), got {other:?}"),
    };
    invalid_key(store.check_all_at(&[], T0), "at least one key");
    invalid_key(store.peek_all_at(&[], T0), "at least one key");
    invalid_key(
        store.check_all_at(
            &[
                KeyCheck::new(&user, "alice", 1),
                KeyCheck::new(&user, "alice", 1),
            ],
            T0,
        ),
        "appears twice",
    );
    // two policies of one algorithm keep one user key under two names (their own scopes)
    let d = store
        .peek_all_at(
            &[
                KeyCheck::new(&user, "alice", 1),
                KeyCheck::new(&ip, "alice", 1),
            ],
            T0,
        )
        .unwrap();
    assert!(d.allowed);
    // ... unless both are bound under one named scope: one name, rejected, not merged
    let scoped_user = store.bind_scoped(
        "shared",
        &Policy::gcra(Rate::per_minute(5).unwrap()).unwrap(),
    );
    let scoped_ip = store.bind_scoped(
        "shared",
        &Policy::gcra(Rate::per_minute(50).unwrap()).unwrap(),
    );
    invalid_key(
        store.check_all_at(
            &[
                KeyCheck::new(&scoped_user, "alice", 1),
                KeyCheck::new(&scoped_ip, "alice", 1),
            ],
            T0,
        ),
        "appears twice",
    );
    invalid_key(
        store.check_all_at(
            &[
                KeyCheck::new(&user, "alice", 1),
                KeyCheck::new(&foreign, "x", 1),
            ],
            T0,
        ),
        "this store",
    );
    assert!(matches!(
        store.check_all_at(
            &[
                KeyCheck::new(&user, "alice", 1),
                KeyCheck::new(&ip, "bob", 0)
            ],
            T0
        ),
        Err(Error::InvalidCost)
    ));
    assert!(matches!(
        store.peek_all_at(&[KeyCheck::new(&ip, "bob", 0)], T0),
        Err(Error::InvalidCost)
    ));
    assert!(matches!(
        store.check_all_at(
            &[
                KeyCheck::new(&user, "alice", 1),
                KeyCheck::new(&ip, "bob", 51)
            ],
            T0
        ),
        Err(Error::CostExceedsCapacity {
            cost: 51,
            capacity: 50
        })
    ));
    // nothing reached the database: alice is untouched
    let d = store
        .peek_all_at(&[KeyCheck::new(&user, "alice", 5)], T0)
        .unwrap();
    assert!(d.allowed && d.decisions[0].remaining == 0);
    // distinct user keys under two policies of one algorithm are fine
    assert!(
        store
            .check_all_at(
                &[
                    KeyCheck::new(&user, "user:alice", 1),
                    KeyCheck::new(&ip, "ip:alice", 1)
                ],
                T0
            )
            .unwrap()
            .allowed
    );
}

#[test]
fn postgres_errors_are_clear() {
    let (Some(a), Some(b)) = (PgTable::new("err_a"), PgTable::new("err_b")) else {
        return;
    };
    errors_are_clear(&a.store(true), &b.store(true));
}

#[test]
fn sqlite_errors_are_clear() {
    let file = SqliteFile::new("errors");
    let other = SqliteStore::in_memory().unwrap();
    other.ensure_schema().unwrap();
    errors_are_clear(&file.store(), &other);
}

#[test]
fn postgres_function_rejects_bad_calls_made_directly_in_sql() {
    let Some(table) = PgTable::new("direct") else {
        return;
    };
    let _store = table.store(true);
    let mut client = postgres_client(&table.url);
    let f = format!("\"{}_check_all\"", table.name);
    let call = |keys: &str| {
        format!(
            "SELECT * FROM {f}(1, 0, {keys}, ARRAY['gcra','gcra'], ARRAY[1,1]::bigint[], \
             ARRAY[1,1], ARRAY[10,10]::bigint[], ARRAY[100,100]::bigint[], \
             ARRAY[10,10]::bigint[], ARRAY[0,0]::bigint[], 0, NULL)"
        )
    };
    let err = client.query(&call("ARRAY['a','a']"), &[]).unwrap_err();
    assert!(
        err.to_string().contains("appears twice") || format!("{err:?}").contains("appears twice"),
        "{err:?}"
    );
    let rows = client.query(&call("ARRAY['b','a']"), &[]).unwrap();
    assert_eq!(rows.len(), 2);
    let index: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(index, [1, 2]);
}

/// A plain blocking client for direct SQL (a runtime of its own).
struct Client {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Client {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.rt.block_on(self.client.query(sql, params))
    }
}

fn postgres_client(url: &str) -> Client {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, connection) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(connection);
    Client { rt, client }
}

// ---------------------------------------------------------------------------------------
// The async API and the database clock.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_async_api_and_database_clock() {
    let Some(table) = PgTable::new("async") else {
        return;
    };
    let caller = table.store(true);
    let user = caller
        .bind(&Policy::gcra(Rate::per_minute(2).unwrap()).unwrap())
        .unwrap();
    let log = caller
        .bind(&Policy::sliding_log(parse_rates("3/min").unwrap()).unwrap())
        .unwrap();
    let checks = [KeyCheck::new(&user, "u", 1), KeyCheck::new(&log, "g", 1)];
    let d = check_at_async(&checks, T0).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.tightest().unwrap().1.remaining, 1); // user: 2 - 1 (the log has 2 left)
    let d = check_at_async(&checks, T0).await.unwrap();
    assert!(d.allowed);
    let d = check_at_async(&checks, T0).await.unwrap();
    assert_eq!(
        (d.allowed, d.binding().map(|(key, _)| key)),
        (false, Some(0))
    );
    let p = peek_at_async(&checks[1..], T0).await.unwrap();
    assert_eq!(p.decisions[0].remaining, 0); // the log: 3 - 2 - this peek's 1

    // the database clock: a store without caller time ignores `now`
    let db = PgStore::builder(&table.url)
        .table(&table.name)
        .unwrap()
        .connect_async()
        .await
        .unwrap();
    let user = db
        .bind(&Policy::gcra(Rate::per_hour(2).unwrap()).unwrap())
        .unwrap();
    let fixed = db
        .bind(&Policy::fixed_window(Rate::per_hour(1).unwrap()).unwrap())
        .unwrap();
    let checks = [
        KeyCheck::new(&user, "db-u", 1),
        KeyCheck::new(&fixed, "db-f", 1),
    ];
    assert!(
        check_at_async(&checks, SystemClock.now())
            .await
            .unwrap()
            .allowed
    );
    let d = check_at_async(&checks, SystemClock.now()).await.unwrap();
    assert_eq!(
        (d.allowed, d.binding().map(|(key, _)| key)),
        (false, Some(1))
    );
    // denied by the fixed window: the user key kept its second unit
    let p = peek_at_async(&checks[..1], SystemClock.now())
        .await
        .unwrap();
    assert!(p.allowed && p.decisions[0].remaining == 0);
    let sync = PgBackend::execute_all(&checks[..1], MultiOp::Peek, SystemClock.now()).unwrap();
    assert!(sync.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_async_api() {
    let file = SqliteFile::new("async");
    let store = file.store();
    let a = store
        .bind(&Policy::sliding_window(Rate::per_minute(2).unwrap()).unwrap())
        .unwrap();
    let b = store
        .bind(&Policy::token_bucket(1, 1, Duration::from_secs(60)).unwrap())
        .unwrap();
    let checks = [KeyCheck::new(&a, "a", 1), KeyCheck::new(&b, "b", 1)];
    assert!(check_at_async(&checks, T0).await.unwrap().allowed);
    let d = check_at_async(&checks, T0).await.unwrap();
    assert_eq!(
        (d.allowed, d.binding().map(|(key, _)| key)),
        (false, Some(1))
    );
    let p = peek_at_async(&checks[..1], T0).await.unwrap();
    assert_eq!(p.decisions[0].remaining, 0); // 2 - 1 charged - 1 peeked
    assert!(
        check_at_async(&checks[..1], SystemClock.now())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        peek_at_async(&checks[..1], SystemClock.now())
            .await
            .unwrap()
            .decisions
            .len()
            == 1
    );
}

/// The core multi-key rules (`tollgate::conformance::multi`), shared with every store.
#[test]
fn the_shared_multi_key_rules_hold_on_sqlite() {
    let file = SqliteFile::new("rules");
    let store = file.store();
    tollgate::conformance::multi::check_multi_rules(|name| store.scope(name), T0, "s:").unwrap();
}

#[test]
fn the_shared_multi_key_rules_hold_on_postgres() {
    let Some(table) = PgTable::new("rules") else {
        return;
    };
    for (caller_time, prefix) in [(false, "db:"), (true, "caller:")] {
        let store = table.store(caller_time);
        tollgate::conformance::multi::check_multi_rules(|name| store.scope(name), T0, prefix)
            .unwrap();
    }
}
