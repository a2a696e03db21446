//! `Keyed`: namespace and HMAC key hashing through the library's `KeyBuilder` for the stores
//! that do not build their own keys (memory, SQLite, PostgreSQL), for single keys, multi-key
//! calls and log reads.

use futures_util::future::BoxFuture;
use tollgate::hooks::StoreFailure;
use tollgate::keys::KeyBuilder;
use tollgate::store::log::{LogBackend, LogEntry};
use tollgate::store::multi::{KeyCheck, MultiBackend, MultiDecision, MultiOp};
use tollgate::store::{Backend, Op, Store};
use tollgate::time::Micros;
use tollgate::{Decision, Error, Policy};

/// Keys through a [`KeyBuilder`] (namespace, HMAC) for stores that do not build their own.
pub(crate) struct Keyed<S> {
    pub(crate) inner: S,
    pub(crate) keys: KeyBuilder,
}

pub(crate) struct KeyedBackend<B> {
    inner: B,
    keys: KeyBuilder,
}

impl<S: Store> Store for Keyed<S> {
    type Backend = KeyedBackend<S::Backend>;
    fn bind(&self, policy: &Policy) -> Result<Self::Backend, Error> {
        Ok(KeyedBackend {
            inner: self.inner.bind(policy)?,
            keys: self.keys.clone(),
        })
    }
}

impl<B: Backend> Backend for KeyedBackend<B> {
    fn execute(&self, key: &str, op: Op, now: Micros) -> Result<Option<Decision>, Error> {
        self.inner.execute(&self.keys.build(key)?, op, now)
    }
    fn execute_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            let key = self.keys.build(key)?;
            self.inner.execute_async(&key, op, now).await
        })
    }
    fn execute_observed(
        &self,
        key: &str,
        op: Op,
        now: Micros,
        failure: &mut Option<StoreFailure>,
    ) -> Result<Option<Decision>, Error> {
        self.inner
            .execute_observed(&self.keys.build(key)?, op, now, failure)
    }
    fn execute_observed_async<'a>(
        &'a self,
        key: &'a str,
        op: Op,
        now: Micros,
        failure: &'a mut Option<StoreFailure>,
    ) -> BoxFuture<'a, Result<Option<Decision>, Error>> {
        Box::pin(async move {
            let key = self.keys.build(key)?;
            self.inner
                .execute_observed_async(&key, op, now, failure)
                .await
        })
    }
}

impl<B: MultiBackend> MultiBackend for KeyedBackend<B> {
    fn execute_all(
        items: &[KeyCheck<'_, Self>],
        op: MultiOp,
        now: Micros,
    ) -> Result<MultiDecision, Error> {
        let keys = built_keys(items)?;
        B::execute_all(&inner_items(items, &keys), op, now)
    }
    fn execute_all_async<'a>(
        items: &'a [KeyCheck<'a, Self>],
        op: MultiOp,
        now: Micros,
    ) -> BoxFuture<'a, Result<MultiDecision, Error>> {
        Box::pin(async move {
            let keys = built_keys(items)?;
            B::execute_all_async(&inner_items(items, &keys), op, now).await
        })
    }
}

impl<B: LogBackend> LogBackend for KeyedBackend<B> {
    fn log_entries(&self, key: &str, now: Micros) -> Result<Vec<LogEntry>, Error> {
        self.inner.log_entries(&self.keys.build(key)?, now)
    }
    fn log_entries_async<'a>(
        &'a self,
        key: &'a str,
        now: Micros,
    ) -> BoxFuture<'a, Result<Vec<LogEntry>, Error>> {
        Box::pin(async move {
            let key = self.keys.build(key)?;
            self.inner.log_entries_async(&key, now).await
        })
    }
}

fn built_keys<B>(items: &[KeyCheck<'_, KeyedBackend<B>>]) -> Result<Vec<String>, Error> {
    items
        .iter()
        .map(|i| i.backend().keys.build(i.key()))
        .collect()
}

fn inner_items<'a, B>(
    items: &[KeyCheck<'a, KeyedBackend<B>>],
    keys: &'a [String],
) -> Vec<KeyCheck<'a, B>> {
    items
        .iter()
        .zip(keys)
        .map(|(i, k)| KeyCheck::new(&i.backend().inner, k, i.cost()))
        .collect()
}
