//! Multi-key calls through a failure policy: the primary store decides every key in one call;
//! when it fails (or the breaker is open), the items' failure policies answer together.

use super::{FailSafe, FailureOutcome, Mode};
use crate::decision::Decision;
use crate::error::{Error, StoreError};
use crate::store::io::{self, Io};
use crate::store::multi::{first_backend, KeyCheck, MultiBackend, MultiDecision, MultiOp};
use crate::time::Micros;
use futures_util::future::BoxFuture;

/// What the failure policies answer when the primary store failed with `err`.
enum Plan<'a, F> {
    /// Some item fails closed: the call fails with the store error.
    Fail,
    /// Each item: `Ok(decision)` admitted by its open policy, or `Err(fallback backend)`.
    Answer(Vec<Result<Decision, &'a F>>),
}

fn plan<'a, B, F>(items: &[KeyCheck<'a, FailSafe<B, F>>]) -> Plan<'a, F> {
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        match &item.backend().mode {
            Mode::Closed => return Plan::Fail,
            Mode::Open { limit } => answers.push(Ok(Decision::fail_open(*limit))),
            Mode::Fallback(f) => answers.push(Err(f)),
        }
    }
    Plan::Answer(answers)
}

fn outcome_of<F>(
    answer: &Result<Decision, &F>,
    fallback: &Result<MultiDecision, Error>,
) -> FailureOutcome {
    match (answer, fallback) {
        (Ok(_), _) => FailureOutcome::Admitted,
        (Err(_), Ok(_)) => FailureOutcome::FellBack,
        (Err(_), Err(_)) => FailureOutcome::FallbackFailed,
    }
}

impl<B: MultiBackend, F: MultiBackend> FailSafe<B, F> {
    /// The items on their primary backends.
    fn primary_items<'a>(items: &[KeyCheck<'a, Self>]) -> Vec<KeyCheck<'a, B>> {
        items
            .iter()
            .map(|i| KeyCheck::new(&i.backend().primary, i.key(), i.cost()))
            .collect()
    }

    /// Merges the open policies' answers with the fallback call's, and reports each item.
    fn merge(
        items: &[KeyCheck<'_, Self>],
        err: &StoreError,
        answers: Vec<Result<Decision, &F>>,
        fallback: Result<MultiDecision, Error>,
    ) -> Result<MultiDecision, Error> {
        let mut store_failures = Vec::with_capacity(items.len());
        for (item, answer) in items.iter().zip(&answers) {
            let b = item.backend();
            let mut failure = None;
            let outcome = outcome_of(answer, &fallback);
            b.guard.observe(
                "rate-limit store",
                err,
                b.policy(),
                outcome,
                Some(&mut failure),
            );
            store_failures.extend(failure);
        }
        let mut from_fallback = match fallback {
            Ok(d) => d.decisions.into_iter(),
            Err(e) => return Err(e),
        };
        let decisions = answers
            .into_iter()
            .map(|a| match a {
                Ok(d) => Ok(d),
                Err(_) => from_fallback
                    .next()
                    .ok_or_else(|| Error::Store(StoreError::new("fallback", "missing a decision"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut answer = MultiDecision::from_decisions(decisions);
        answer.store_failures = store_failures;
        Ok(answer)
    }

    /// The items' answers once the primary failed with `err`: an error when an item fails
    /// closed; else each item's open-policy decision or its fallback, and the fallback items.
    #[allow(clippy::type_complexity)]
    fn after_failure<'a>(
        items: &[KeyCheck<'a, Self>],
        err: &StoreError,
    ) -> Result<(Vec<Result<Decision, &'a F>>, Vec<KeyCheck<'a, F>>), Error> {
        let answers = match plan(items) {
            Plan::Fail => return Err(Self::report_closed(items, err.clone())),
            Plan::Answer(a) => a,
        };
        let fallback_items = items
            .iter()
            .zip(&answers)
            .filter_map(|(i, a)| {
                a.as_ref()
                    .err()
                    .map(|f| KeyCheck::new(*f, i.key(), i.cost()))
            })
            .collect();
        Ok((answers, fallback_items))
    }

    fn report_closed(items: &[KeyCheck<'_, Self>], err: StoreError) -> Error {
        for item in items {
            let b = item.backend();
            b.guard.observe(
                "rate-limit store",
                &err,
                b.policy(),
                FailureOutcome::Rejected,
                None,
            );
        }
        Error::Store(err)
    }
}

impl<B: MultiBackend, F: MultiBackend> FailSafe<B, F> {
    /// The one flow of a multi-key call; `io` says how the store calls are made.
    async fn run_all(
        io: Io,
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let first = first_backend(items)?;
        let err = match first.guard.breaker.admit() {
            super::breaker::Admission::Reject(err) => err,
            admission => {
                let primary = Self::primary_items(items);
                let result = match io {
                    Io::Blocking => B::execute_all(&primary, op, now),
                    Io::Async => B::execute_all_async(&primary, op, now).await,
                };
                match first.guard.settle(admission.is_probe(), result) {
                    Ok(answered) => return answered,
                    Err(err) => err,
                }
            }
        };
        let (answers, fallback_items) = Self::after_failure(items, &err)?;
        let fallback = match io {
            _ if fallback_items.is_empty() => Ok(MultiDecision::from_decisions(vec![])),
            Io::Blocking => F::execute_all(&fallback_items, op, now),
            Io::Async => F::execute_all_async(&fallback_items, op, now).await,
        };
        Self::merge(items, &err, answers, fallback)
    }
}

/// The primary decides every key in one call; when it fails or the breaker (the first item's)
/// is open, an item with the closed policy fails the call, open items are admitted, and the
/// fallback items are decided together on their fallback backends (one all-or-nothing call).
/// The answer then carries what each item's policy did
/// ([`MultiDecision::store_failures`]), as a single-key call reports it.
impl<B: MultiBackend, F: MultiBackend> MultiBackend for FailSafe<B, F> {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        io::blocking(Self::run_all(Io::Blocking, items, op, now), || {
            Err(StoreError::new("failure policy", "a blocking call did not complete").into())
        })
    }

    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(Self::run_all(Io::Async, items, op, now))
    }
}
