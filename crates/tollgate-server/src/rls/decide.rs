//! One `ShouldRateLimit` call: match every descriptor, decide every limited one in one
//! multi-key call (all-or-nothing: if any denies, nothing is charged anywhere), and build the
//! response (per-descriptor statuses in request order, optional IETF fields).

use super::rules::{Limit, Match, Rules};
use super::stats::near_limit_hits;
use super::OverrideCache;
use crate::app::App;
use crate::config::FailurePolicy;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::multi::{execute_all_dyn_async, KeyCheck, MultiOp};
use tollgate::store::{Backend, Op};
use tollgate::{Decision, Error};
use tollgate_tower::headers::{
    binding_rate, is_valid_policy_name, quota_window, ratelimit_field, ratelimit_policy_field,
    PolicyReport,
};
use tonic::Status;

/// What a descriptor asks of its limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Not limited (no match, `unlimited`, or replaced by another limit).
    Free,
    /// `hits` to charge (`peek` when the addend is 0: check only).
    Hits { hits: u64, peek: bool },
    /// `is_negative_hits`: give `hits` back.
    Refund(u64),
}

struct Item {
    m: Option<Match>,
    ask: Ask,
    /// Index of the store call item that decides this descriptor.
    slot: Option<usize>,
}

/// A key decided in a multi-key call (descriptors with the same limit and key merged).
struct Slot {
    limit: Arc<Limit>,
    key: String,
    hits: u64,
    peek: bool,
    decision: Option<Decision>,
    /// The hits were charged (a check of an admitted request).
    charged: bool,
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn report_name(limit: &Limit) -> String {
    if let Some(n) = limit.name().filter(|n| is_valid_policy_name(n)) {
        return n.to_string();
    }
    let raw = limit.name().unwrap_or(limit.stat_key());
    let s: String = raw
        .bytes()
        .take(64)
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "rls".into()
    } else {
        s
    }
}

/// What a failed store call becomes: the gRPC status to answer with, or (failure policy
/// `open` / `closed`) the verdict to give every key of the call.
enum Failed {
    Status(Status),
    Verdict(bool),
}

fn store_error(app: &App, e: &Error) -> Failed {
    match e {
        Error::Store(e) => {
            app.record_store_error();
            // `open` and `local` were answered by the store's failure policy (the library's
            // `FailSafe`, which decides multi-key calls too) before this; an error that still
            // arrives is `closed` (deny) or `error`: UNAVAILABLE, so Envoy's
            // failure_mode_deny decides.
            match app.failure_policy() {
                FailurePolicy::Closed => Failed::Verdict(false),
                FailurePolicy::Open => Failed::Verdict(true),
                _ => Failed::Status(Status::unavailable(format!("store unavailable: {e}"))),
            }
        }
        other => Failed::Status(Status::invalid_argument(other.to_string())),
    }
}

/// Decides a request. `Err` is the gRPC status to answer with (`UNAVAILABLE` for a store
/// failure unless the failure policy decides, `INVALID_ARGUMENT` for a bad request).
pub(crate) async fn should_rate_limit(
    app: &App,
    rules: &Rules,
    overrides: &OverrideCache,
    req: &RateLimitRequest,
    response_headers: bool,
) -> Result<RateLimitResponse, Status> {
    if req.domain.is_empty() {
        return Err(Status::invalid_argument(
            "rate limit domain must not be empty",
        ));
    }
    if req.descriptors.is_empty() {
        return Err(Status::invalid_argument(
            "rate limit descriptor list must not be empty",
        ));
    }
    let request_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    let mut items = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.iter().enumerate() {
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        if entries.is_empty() {
            return Err(Status::invalid_argument(format!(
                "descriptor {i} has no entries"
            )));
        }
        let m = match (&d.limit, rules.has_domain(&req.domain)) {
            (Some(o), true) => Some(overrides.get(app, &req.domain, &entries, o)?),
            _ => rules.find(&req.domain, &entries),
        };
        let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
        let ask = match &m {
            Some(m) if !m.limit.unlimited() => {
                if d.is_negative_hits {
                    Ask::Refund(hits)
                } else {
                    Ask::Hits {
                        hits: hits.max(1),
                        peek: hits == 0,
                    }
                }
            }
            _ => Ask::Free,
        };
        items.push(Item { m, ask, slot: None });
    }
    // `replaces`: a matched limit named in another matched limit's `replaces` is skipped.
    let replaced: HashSet<String> = items
        .iter()
        .filter(|it| it.ask != Ask::Free)
        .filter_map(|it| it.m.as_ref())
        .flat_map(|m| m.limit.replaces().iter().cloned())
        .collect();
    if !replaced.is_empty() {
        for it in &mut items {
            if let Some(name) = it.m.as_ref().and_then(|m| m.limit.name()) {
                if replaced.contains(name) {
                    it.ask = Ask::Free;
                }
            }
        }
    }
    // Refunds first (they decide nothing).
    for it in &items {
        if let (Ask::Refund(n), Some(m)) = (it.ask, &it.m) {
            if n == 0 {
                continue;
            }
            let key = app
                .store_key(&m.store_key)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if let Some(b) = m.limit.backend() {
                let now = super::now_us();
                if let Err(e) = b.execute_async(&key, Op::Refund(n), now).await {
                    if let Failed::Status(s) = store_error(app, &e) {
                        return Err(s);
                    }
                }
            }
        }
    }
    // One slot per (limit, key): the same descriptor twice is charged once with both hits.
    let mut slots: Vec<Slot> = Vec::new();
    let mut index: HashMap<(usize, String), usize> = HashMap::new();
    for it in &mut items {
        let (Ask::Hits { hits, peek }, Some(m)) = (it.ask, &it.m) else {
            continue;
        };
        let key = app
            .store_key(&m.store_key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .into_owned();
        let id = (Arc::as_ptr(&m.limit) as *const () as usize, key);
        let slot = *index.entry(id.clone()).or_insert_with(|| {
            slots.push(Slot {
                limit: Arc::clone(&m.limit),
                key: id.1.clone(),
                hits: 0,
                peek: true,
                decision: None,
                charged: false,
            });
            slots.len() - 1
        });
        let s = &mut slots[slot];
        if !peek {
            s.hits = if s.peek {
                hits
            } else {
                s.hits.saturating_add(hits)
            };
            s.peek = false;
        } else if s.peek {
            s.hits = 1;
        }
        it.slot = Some(slot);
    }
    let denied = decide_slots(app, &mut slots).await?;
    let statuses = statuses(&items, &slots);
    let mut resp = RateLimitResponse {
        overall_code: if denied { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..Default::default()
    };
    if response_headers {
        resp.response_headers_to_add = fields(&slots);
    }
    Ok(resp)
}

/// Runs the store calls; true when the request is over the limit.
async fn decide_slots(app: &App, slots: &mut [Slot]) -> Result<bool, Status> {
    // A cost above what a limit can ever admit is a denial of its own (no store call);
    // `requests_per_unit: 0` (no policy) admits nothing.
    let mut denied = false;
    for s in slots.iter_mut() {
        let max = s.limit.policy().map_or(0, tollgate::Policy::max_cost);
        if s.hits > max {
            let limit = s.limit.requests_per_unit();
            s.decision = Some(Decision::from_parts(
                false,
                u64::from(limit),
                0,
                s.limit
                    .unit()
                    .map_or(Duration::ZERO, |u| u.duration())
                    .as_micros() as u64,
                0,
                Some(0),
            ));
            if !s.limit.shadow_mode() {
                denied = true;
            }
        }
    }
    let now = super::now_us();
    // Enforced keys: check-only ones (hits_addend 0) peeked first, then the charged ones in
    // one all-or-nothing call; shadow keys are charged only when the request is admitted.
    for pass in [Pass::Peek, Pass::Check, Pass::Shadow] {
        let picked: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].decision.is_none() && pass.takes(&slots[i]))
            .collect();
        if picked.is_empty() {
            continue;
        }
        let op = match pass {
            Pass::Peek => MultiOp::Peek,
            Pass::Check => MultiOp::Check,
            Pass::Shadow if denied => MultiOp::Peek,
            Pass::Shadow => MultiOp::Check,
        };
        if pass == Pass::Check && denied {
            // Decide without charging, so the statuses still say where each key stands.
            let r = run(app, slots, &picked, MultiOp::Peek, now).await?;
            assign(slots, &picked, r, false);
            continue;
        }
        let r = run(app, slots, &picked, op, now).await?;
        let all = r.iter().all(|d| d.allowed);
        if pass != Pass::Shadow && !all {
            denied = true;
        }
        assign(slots, &picked, r, op == MultiOp::Check && all);
    }
    Ok(denied)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Peek,
    Check,
    Shadow,
}

impl Pass {
    fn takes(self, s: &Slot) -> bool {
        match self {
            Pass::Peek => !s.limit.shadow_mode() && s.peek,
            Pass::Check => !s.limit.shadow_mode() && !s.peek,
            Pass::Shadow => s.limit.shadow_mode(),
        }
    }
}

fn assign(slots: &mut [Slot], picked: &[usize], decisions: Vec<Decision>, charged: bool) {
    for (&i, d) in picked.iter().zip(decisions) {
        slots[i].decision = Some(d);
        slots[i].charged = charged;
    }
}

/// Where a key stands after the call: a key's own decision is "after charging its hits";
/// when they were not charged (check only, or the request was denied), add them back.
fn left_after(s: &Slot) -> Option<Decision> {
    let mut d = s.decision?;
    if d.allowed && !s.charged {
        d.remaining = d.remaining.saturating_add(s.hits).min(d.limit);
    }
    Some(d)
}

async fn run(
    app: &App,
    slots: &[Slot],
    picked: &[usize],
    op: MultiOp,
    now: u64,
) -> Result<Vec<Decision>, Status> {
    let mut checks = Vec::with_capacity(picked.len());
    for &i in picked {
        let s = &slots[i];
        let Some(b) = s.limit.backend() else {
            return Err(Status::internal("a limited descriptor has no store"));
        };
        checks.push(KeyCheck::new(&**b, s.key.as_str(), s.hits));
    }
    match execute_all_dyn_async(&checks, op, now).await {
        Ok(d) => Ok(d.decisions),
        Err(e) => match store_error(app, &e) {
            Failed::Status(status) => Err(status),
            // Failure policy `closed`: every key denies (retry in 1 s); `open`: every key
            // admits. Nothing was charged.
            Failed::Verdict(allowed) => Ok(picked
                .iter()
                .map(|&i| {
                    let limit = u64::from(slots[i].limit.requests_per_unit());
                    if allowed {
                        Decision::fail_open(limit)
                    } else {
                        Decision::from_parts(false, limit, 0, 1_000_000, 1_000_000, Some(0))
                    }
                })
                .collect()),
        },
    }
}

fn statuses(items: &[Item], slots: &[Slot]) -> Vec<DescriptorStatus> {
    items
        .iter()
        .map(|it| {
            let mut st = DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            let Some(m) = &it.m else { return st };
            st.current_limit = Some(RateLimit {
                name: m.limit.name().unwrap_or_default().to_string(),
                requests_per_unit: m.limit.requests_per_unit(),
                unit: m.limit.unit().map_or(0, |u| u.proto()),
            });
            let Some(slot) = it.slot.map(|i| &slots[i]) else {
                return st;
            };
            let Some(d) = &left_after(slot) else {
                return st;
            };
            let hits = slot.hits;
            let stats = m.limit.stats_for(&entries_of(&m.store_key));
            stats.total_hits.increment(hits);
            st.limit_remaining = u32::try_from(d.remaining).unwrap_or(u32::MAX);
            st.duration_until_reset = Some(pb_duration(if d.allowed {
                d.reset_after
            } else {
                d.retry_after
            }));
            if !d.allowed {
                stats.over_limit.increment(hits);
                if m.limit.shadow_mode() {
                    stats.shadow_mode.increment(hits);
                } else {
                    st.code = Code::OverLimit as i32;
                }
            } else if slot.charged {
                stats.within_limit.increment(hits);
                let used = d.limit.saturating_sub(d.remaining);
                stats
                    .near_limit
                    .increment(near_limit_hits(d.limit, used, hits));
            }
            st
        })
        .collect()
}

/// The request's `(key, value)` entries back from a store key (for detailed metrics).
fn entries_of(store_key: &str) -> Vec<(&str, &str)> {
    let rest = store_key.split_once("}:").map_or("", |(_, r)| r);
    rest.split('|')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

fn fields(slots: &[Slot]) -> Vec<HeaderValue> {
    let names: Vec<String> = slots.iter().map(|s| report_name(&s.limit)).collect();
    let mut reports = Vec::with_capacity(slots.len());
    for (s, name) in slots.iter().zip(&names) {
        let (Some(d), Some(p)) = (&left_after(s), s.limit.policy()) else {
            continue;
        };
        let rate = &p.rates()[binding_rate(p, d).min(p.rates().len() - 1)];
        reports.push(PolicyReport {
            name,
            decision: *d,
            window_secs: quota_window(p.algorithm(), rate).1,
        });
    }
    let mut out = Vec::new();
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_string(),
        value,
        ..Default::default()
    };
    if let Some(v) = ratelimit_policy_field(&reports) {
        out.push(header("RateLimit-Policy", v));
    }
    if let Some(v) = ratelimit_field(&reports) {
        out.push(header("RateLimit", v));
    }
    out
}
