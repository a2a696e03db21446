//! [`LimiterBuilder`]: a limiter's clock, key length and hook, then its store.

use super::direct::DirectInner;
use super::{DirectLimiter, Inner, Limiter};
use crate::error::Error;
use crate::hooks::Hook;
use crate::policy::Policy;
use crate::store::memory::{DirectSlot, MemoryBackend, MemoryStore};
use crate::store::{Backend, Store};
use crate::time::{Clock, ClockHandle};
use std::sync::Arc;
/// Builds a [`Limiter`] (or a [`DirectLimiter`]): clock, key length, store.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
/// let limiter = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
///     .clock(ManualClock::new(0))
///     .max_key_len(64)
///     .build();
/// assert!(limiter.check(&"x".repeat(65)).is_err());
/// ```
#[derive(Debug)]
#[must_use = "call build() or build_with(store)"]
pub struct LimiterBuilder {
    pub(super) policy: Policy,
    pub(super) clock: ClockHandle,
    pub(super) max_key_len: usize,
    pub(super) hook: Option<Hook>,
}

impl LimiterBuilder {
    /// Uses `clock` instead of the system clock (for decisions of the memory store, and for
    /// every wait).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, time::ManualClock};
    /// let b = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).clock(ManualClock::new(5));
    /// # let _ = b;
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockHandle::custom(Arc::new(clock));
        self
    }

    /// Uses a shared clock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{Limiter, Policy, Rate, time::{Clock, SystemClock}};
    /// let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// let b = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).shared_clock(clock);
    /// # let _ = b;
    /// ```
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = ClockHandle::custom(clock);
        self
    }

    /// Rejects keys longer than `max` bytes with [`Error::KeyTooLong`] (default 1024).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).max_key_len(3).build();
    /// assert!(l.check("abcd").is_err());
    /// ```
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// Shows every call's verdict to `hook` ([`Event::Decision`](crate::hooks::Event::Decision)):
    /// allowed, denied, failed, and the store failure a failure policy answered. The hook
    /// cannot change a verdict (a panic inside it is caught); a second hook runs after the
    /// first. See [`hooks`](crate::hooks).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, hooks::Hook};
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
    ///     .hook(Hook::on_block(|key, d| eprintln!("{key} blocked for {:?}", d.retry_after)))
    ///     .build();
    /// # let _ = l;
    /// ```
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hook = Some(match self.hook.take() {
            Some(first) => first.then(hook),
            None => hook,
        });
        self
    }

    /// Shorthand for [`hook`](Self::hook)`(Hook::on_decision(f))`.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
    ///     .on_decision(|e| println!("{}: allowed={}", e.key, e.is_allowed()))
    ///     .build();
    /// assert!(l.check("k").unwrap().allowed);
    /// ```
    pub fn on_decision(
        self,
        f: impl Fn(&crate::hooks::DecisionEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.hook(Hook::on_decision(f))
    }

    /// A limiter on a default in-memory store.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).build();
    /// assert!(l.check("k").unwrap().allowed);
    /// ```
    pub fn build(self) -> Limiter<MemoryBackend> {
        let backend = MemoryStore::default()
            .bind(&self.policy)
            .expect("the memory store accepts every valid policy");
        self.finish(backend)
    }

    /// A limiter on `store`.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::memory::MemoryStore};
    /// let l = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap())
    ///     .build_with(&MemoryStore::new().max_keys(100))
    ///     .unwrap();
    /// assert!(l.check("k").unwrap().allowed);
    /// ```
    pub fn build_with<S: Store>(self, store: &S) -> Result<Limiter<S::Backend>, Error> {
        let backend = store.bind(&self.policy)?;
        Ok(self.finish(backend))
    }

    /// A limiter on an already bound backend.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate, store::{Store, memory::MemoryStore}};
    /// let policy = Policy::gcra(Rate::per_second(1).unwrap()).unwrap();
    /// let backend = MemoryStore::new().bind(&policy).unwrap();
    /// let l = Limiter::builder(policy).build_on(backend);
    /// assert!(l.check("k").unwrap().allowed);
    /// ```
    pub fn build_on<B: Backend>(self, backend: B) -> Limiter<B> {
        self.finish(backend)
    }

    /// An unkeyed in-memory limiter.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy, Rate};
    /// let d = Limiter::builder(Policy::gcra(Rate::per_second(1).unwrap()).unwrap()).build_direct();
    /// assert!(d.check().unwrap().allowed);
    /// ```
    pub fn build_direct(self) -> DirectLimiter {
        DirectLimiter {
            inner: Arc::new(DirectInner {
                slot: DirectSlot::new(&self.policy),
                policy: self.policy,
                clock: self.clock,
            }),
        }
    }

    fn finish<B: Backend>(self, backend: B) -> Limiter<B> {
        Limiter {
            inner: Arc::new(Inner {
                policy: self.policy,
                backend,
                clock: self.clock,
                max_key_len: self.max_key_len,
                hook: self.hook,
            }),
        }
    }
}
