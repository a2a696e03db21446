//! Single-key decisions: check, peek, reset and refund on a policy, through the store's
//! failure policy and breaker, with the server's metrics.

use super::*;

impl App {
    /// Decides `cost` on `key` and charges it when admitted.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// assert!(!app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn check(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
    ) -> Result<Outcome, AppError> {
        self.decide(entry, key, cost, true).await
    }

    /// The decision `check` would return, charging nothing.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// assert!(app.peek(&p, "k", 1).await.unwrap().decision.allowed);
    /// assert!(app.peek(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn peek(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
    ) -> Result<Outcome, AppError> {
        self.decide(entry, key, cost, false).await
    }

    async fn decide(
        &self,
        entry: &PolicyEntry,
        key: &str,
        cost: u64,
        charge: bool,
    ) -> Result<Outcome, AppError> {
        self.validate_key(key)?;
        if cost == 0 {
            return Err(AppError::BadRequest("the cost must be at least 1".into()));
        }
        let started = Instant::now();
        let store_key = self.keys.map(key)?;
        let (result, failure) = if self.is_memory {
            // The memory store never blocks and never fails.
            let r = if charge {
                entry.limiter.check_n(&store_key, cost)
            } else {
                entry.limiter.peek(&store_key, cost)
            };
            (r, None)
        } else {
            // Through the library's failure policy and circuit breaker (the store applies
            // its own call timeout); `failure` says when the policy answered instead.
            let op = if charge {
                Op::Check(cost)
            } else {
                Op::Peek(cost)
            };
            let mut failure = None;
            let r = entry
                .limiter
                .backend()
                .execute_observed_async(&store_key, op, now_us(), &mut failure)
                .await
                .and_then(|d| {
                    d.ok_or_else(|| StoreError::new("store", "returned no decision").into())
                });
            (r, failure)
        };
        let outcome = match result {
            Ok(decision) => {
                if let Some(f) = &failure {
                    self.store_errors.record(&f.error);
                }
                Ok(Outcome {
                    decision,
                    store_error: failure.map(|f| f.error.to_string()),
                })
            }
            Err(Error::Store(e)) => {
                self.store_errors.record(&e);
                self.on_store_failure(entry, e)
            }
            Err(e @ (Error::CostExceedsCapacity { .. } | Error::InvalidCost)) => {
                Err(AppError::BadRequest(e.to_string()))
            }
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        };
        entry
            .metrics
            .latency
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(o) if o.decision.allowed => entry.metrics.allowed.increment(1),
            Ok(_) => entry.metrics.denied.increment(1),
            Err(_) => entry.metrics.errors.increment(1),
        }
        outcome
    }

    /// A store error that reached the server: `closed` turns it into a denial (retry in
    /// 1 s); every other policy reports it (503 / `STOREERR`). (`open` and `local` were
    /// answered by the library's failure policy before this.)
    fn on_store_failure(&self, entry: &PolicyEntry, e: StoreError) -> Result<Outcome, AppError> {
        match self.failure {
            FailurePolicy::Closed => {
                let limit = entry.policy().max_cost();
                Ok(Outcome {
                    decision: Decision::from_parts(false, limit, 0, 1_000_000, 1_000_000, Some(0)),
                    store_error: Some(e.to_string()),
                })
            }
            _ => Err(AppError::StoreUnavailable(e.to_string())),
        }
    }

    /// Forgets `key` under a policy.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// let _ = app.check(&p, "k", 1).await.unwrap();
    /// app.reset(&p, "k").await.unwrap();
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    pub async fn reset(&self, entry: &PolicyEntry, key: &str) -> Result<(), AppError> {
        self.validate_key(key)?;
        let store_key = self.keys.map(key)?;
        let r = entry.limiter.reset_async(&store_key).await;
        self.unit_result(r)
    }

    /// Gives back `amount` units to `key` under a policy.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = tollgate_server::app::App::new(&tollgate_server::config::Config::default(), None).unwrap();
    /// let p = app.inline(None, "1/s").unwrap();
    /// let _ = app.check(&p, "k", 1).await.unwrap();
    /// assert_eq!(app.refund(&p, "k", 5).await.unwrap(), 1); // only 1 was used
    /// assert_eq!(app.refund(&p, "k", 5).await.unwrap(), 0); // nothing left to give back
    /// assert!(app.check(&p, "k", 1).await.unwrap().decision.allowed);
    /// # });
    /// ```
    ///
    /// Returns the units given back: at most `amount`, never beyond fresh (the units the
    /// key's binding rate had in use), measured by a peek before and after the refund; the
    /// requested `amount` if the store failed after the refund was made.
    pub async fn refund(
        &self,
        entry: &PolicyEntry,
        key: &str,
        amount: u64,
    ) -> Result<u64, AppError> {
        self.validate_key(key)?;
        if amount == 0 {
            return Err(AppError::BadRequest("the amount must be at least 1".into()));
        }
        let store_key = self.keys.map(key)?;
        // Units a check of cost 1 could still take: remaining + 1 when it would pass.
        let available = |d: &Decision| if d.allowed { d.remaining + 1 } else { 0 };
        let before = entry.limiter.peek_async(&store_key, 1).await;
        let before = match before {
            Ok(d) => available(&d),
            Err(e) => return self.unit_result(Err(e)).map(|()| 0),
        };
        let r = entry.limiter.refund_async(&store_key, amount).await;
        self.unit_result(r)?;
        Ok(match entry.limiter.peek_async(&store_key, 1).await {
            Ok(d) => available(&d).saturating_sub(before).min(amount),
            Err(_) => amount,
        })
    }

    fn unit_result(&self, r: Result<(), Error>) -> Result<(), AppError> {
        match r {
            Ok(()) => Ok(()),
            Err(Error::Store(e)) => {
                self.store_errors.record(&e);
                Err(AppError::StoreUnavailable(e.to_string()))
            }
            Err(e) => Err(AppError::BadRequest(e.to_string())),
        }
    }
}
