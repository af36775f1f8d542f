//! Upstreams as the data plane uses them: backends with live state, the balancer, and the
//! policies (timeouts, retries, breaker, passive health) compiled from configuration.
//!
//! [`Upstream::pick`] is the one place where availability is decided; balancers only rank.

pub mod backend;
pub mod balancer;
pub mod breaker;
pub mod discovery;
pub mod health;
pub mod outlier;
pub mod queue;
pub mod sticky;

use crate::config::{self, Algorithm, Protocol, UpstreamConfig};
use backend::{availability_epoch, now_ms, Backend, Health};
use balancer::{Balancer, PickCtx};
use breaker::BreakerPolicy;
use outlier::PassivePolicy;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What a consistent-hash key is taken from.
#[derive(Clone, Debug, PartialEq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    /// `client_ip`, `path`, `header:NAME` or `cookie:NAME`; `None` for anything else.
    pub fn parse(key: &str) -> Option<HashKey> {
        match key {
            "client_ip" => Some(HashKey::ClientIp),
            "path" => Some(HashKey::Path),
            _ => {
                if let Some(h) = key.strip_prefix("header:") {
                    http::HeaderName::try_from(h).ok().map(HashKey::Header)
                } else {
                    key.strip_prefix("cookie:")
                        .filter(|c| !c.is_empty())
                        .map(|c| HashKey::Cookie(c.to_string()))
                }
            }
        }
    }
}

/// Which failures may be retried, and how often.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub on_status: Vec<u16>,
    pub budget_ratio: f64,
    pub backoff: Duration,
    pub max_replay_body: u64,
}

impl RetryPolicy {
    /// Without a `retry` section a request that never reached a backend (connect failure) is
    /// tried once more elsewhere, as HAProxy's `redispatch` does: it is always safe.
    fn from_config(c: Option<&config::RetryConfig>) -> Self {
        let on: Vec<String> = c
            .and_then(|c| c.on.clone())
            .unwrap_or_else(|| vec!["connect_failure".into()]);
        RetryPolicy {
            attempts: c.and_then(|c| c.attempts).unwrap_or(2),
            per_try_timeout: c.and_then(|c| c.per_try_timeout).map(|d| d.get()),
            on_connect_failure: on.iter().any(|o| o == "connect_failure"),
            on_reset: on.iter().any(|o| o == "reset"),
            on_timeout: on.iter().any(|o| o == "timeout"),
            on_status: on.iter().filter_map(|o| o.parse().ok()).collect(),
            // Envoy's default retry budget is 20% of active requests; Finagle's 20% plus 10/s.
            budget_ratio: c.and_then(|c| c.budget_ratio).unwrap_or(0.2),
            backoff: c
                .and_then(|c| c.backoff)
                .map_or(Duration::from_millis(25), |d| d.get()),
            max_replay_body: c
                .and_then(|c| c.max_replay_body.as_deref())
                .and_then(|s| config::size::parse_size(s).ok())
                .unwrap_or(64 * 1024),
        }
    }
}

pub struct Upstream {
    pub name: String,
    /// Sticky sessions by cookie, when configured.
    pub sticky: Option<Box<sticky::Sticky>>,
    pub backends: Vec<Backend>,
    balancer: Box<dyn Balancer>,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub breaker: Option<BreakerPolicy>,
    pub passive: Option<PassivePolicy>,
    pub retry: RetryPolicy,
    /// The slow-start ramp (0 = off; see [`Upstream::ramp`]). Always off for `consistent_hash`:
    /// thinning a ramping backend's picks would send the same key to it or to its neighbour at
    /// random, which breaks the affinity the algorithm is for (HAProxy too ramps only dynamic
    /// algorithms).
    pub slow_start_ms: u64,
    /// An active `health_check` is configured. Only then does active health gate traffic: a
    /// verdict left by a check since removed would never be revised (HAProxy treats a server
    /// without `check` as always up).
    pub checked: bool,
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    /// Some backend is a `backup`: picks try the primaries first.
    pub has_backups: bool,
    pub config: UpstreamConfig,
    /// Retry budget accounting: requests and retries seen, for `budget_ratio`.
    pub budget: outlier::RetryBudget,
    /// How connections to the backends are made: protocol, TLS client settings.
    pub connector: crate::proxy::connector::Connector,
    /// The `max_connections` queue, shared by every compile of the upstream (see
    /// [`queue::Queue`]).
    pub queue: std::sync::Arc<queue::Queue>,
    /// Discovered backends must pass a health check before they take traffic: with `discovery`
    /// and `health_check` both set, `unknown` counts as not available. Upstreams without discovery
    /// keep giving `unknown` the benefit of the doubt, so a reload never starves them.
    pub require_checked: bool,
    /// Per backend, the availability epoch at which it was last found fully in service (see
    /// [`backend::availability_epoch`]); 0 = not known. A pick trusts a current stamp instead of
    /// reading the backend's state, so choosing among 10,000 backends costs no more cache misses
    /// than among 3.
    stamps: Box<[AtomicU64]>,
}

/// Slow start's floor: a backend that just joined takes a tenth of its share (Envoy's default
/// `min_weight_percent`), enough to warm it without flooding it.
const RAMP_FLOOR: f64 = 0.1;
/// How many times one pick may re-pick past ramping backends before it keeps what it has.
const RAMP_REPICKS: usize = 3;

/// Why no backend could be chosen; becomes the `x-switchyard-error` reason of a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    Empty,
    NoneAvailable,
    /// Some backend would be available but all such are at `max_connections`.
    Full,
}

impl Upstream {
    pub fn compile(name: &str, cfg: &UpstreamConfig, backends: Vec<Backend>) -> Upstream {
        // Validation refused keys that do not parse.
        let hash_key = cfg
            .hash_key
            .as_deref()
            .and_then(HashKey::parse)
            .unwrap_or(HashKey::ClientIp);
        let t = &cfg.timeouts;
        let checked = cfg.health_check.is_some();
        let has_backups = backends.iter().any(|b| b.backup);
        let sticky = cfg
            .sticky
            .as_ref()
            .map(|c| Box::new(sticky::Sticky::new(c, &backends)));
        Upstream {
            sticky,
            stamps: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            name: name.to_string(),
            balancer: balancer::build(cfg.algorithm, &backends),
            backends,
            algorithm: cfg.algorithm,
            hash_key,
            protocol: cfg.protocol,
            connect_timeout: t.connect.map_or(Duration::from_secs(2), |d| d.get()),
            request_timeout: t.request.map_or(Duration::from_secs(30), |d| d.get()),
            idle_timeout: t.idle.map_or(Duration::from_secs(60), |d| d.get()),
            breaker: cfg.circuit_breaker.as_ref().map(BreakerPolicy::from_config),
            passive: cfg.passive_health.as_ref().map(PassivePolicy::from_config),
            retry: RetryPolicy::from_config(cfg.retry.as_ref()),
            slow_start_ms: match cfg.algorithm {
                Algorithm::ConsistentHash => 0,
                _ => cfg.slow_start.map_or(0, |d| d.get().as_millis() as u64),
            },
            checked,
            max_connections: cfg.max_connections,
            max_pending: cfg.max_pending,
            has_backups,
            config: cfg.clone(),
            budget: outlier::RetryBudget::default(),
            queue: Default::default(),
            require_checked: cfg.discovery.is_some() && checked,
            connector: crate::proxy::connector::Connector::from_config(name, cfg),
        }
    }

    /// Whether backend `i` may take a new request now: the single availability rule. Slow start
    /// is not part of it: a ramping backend is available, only picked less often (see
    /// [`Upstream::ramp`]).
    pub fn available(&self, i: usize, now: u64) -> bool {
        let b = &self.backends[i];
        self.usable_ignoring_limit(i, now)
            && self
                .max_connections
                .is_none_or(|m| b.state.active.load(Relaxed) < m)
    }

    /// Healthy (when checked), not draining, not ejected, circuit admitting: everything but load.
    fn usable_ignoring_limit(&self, i: usize, now: u64) -> bool {
        let b = &self.backends[i];
        let s = &b.state;
        b.weight > 0
            && !s.is_draining()
            && self.health_admits(s.health())
            && !s.is_ejected(now)
            && self
                .breaker
                .as_ref()
                .is_none_or(|p| s.breaker.admits(p, now))
    }

    /// Active health as it gates traffic: `unhealthy` only while a check can revise it, and
    /// `unknown` only where a first check must pass (see `require_checked`).
    fn health_admits(&self, h: Health) -> bool {
        match h {
            Health::Healthy => true,
            Health::Unhealthy => !self.checked,
            Health::Unknown => !self.require_checked,
        }
    }

    /// Slow start: the fraction of its full share backend `i` takes at `now`, rising linearly
    /// from [`RAMP_FLOOR`] to 1 over `slow_start` from when it joined or recovered.
    pub fn ramp(&self, i: usize, now: u64) -> f64 {
        let age = self.backends[i].state.in_service_ms(now);
        if age >= self.slow_start_ms {
            return 1.0;
        }
        RAMP_FLOOR + (1.0 - RAMP_FLOOR) * age as f64 / self.slow_start_ms as f64
    }

    /// Scales a ramping backend's share by thinning the picks that land on it: such a pick stands
    /// with probability [`Upstream::ramp`], else the balancer picks again without it. Each
    /// algorithm thus ranks the rest its own way (round robin passes the turn on, least
    /// connections takes the next least loaded, p2c and random draw again), weights and load
    /// included, and the ramping backend gets its weight × ramp of the traffic. A ramping backend
    /// is never refused: when nothing else is available, or the re-picks land on ramping ones
    /// too, the pick stands.
    fn thin_ramping(
        &self,
        first: usize,
        ctx: &PickCtx,
        tried: &[usize],
        now: &OnceCell<u64>,
        epoch: u64,
    ) -> usize {
        let mut passed = [usize::MAX; RAMP_REPICKS];
        let mut i = first;
        for n in 0..RAMP_REPICKS {
            // A current stamp means fully ramped (see `available_at`).
            if self.stamps[i].load(Relaxed) == epoch
                || fastrand::f64() < self.ramp(i, *now.get_or_init(now_ms))
            {
                return i;
            }
            passed[n] = i;
            let passed = &passed[..=n];
            let again = self.balancer.pick(&self.backends, ctx, &mut |j| {
                !passed.contains(&j) && !tried.contains(&j) && self.available_at(j, now, epoch)
            });
            match again {
                Some(j) => i = j,
                None => return i,
            }
        }
        i
    }

    /// Resets live state left by a policy this upstream no longer has, which nothing would ever
    /// update again: without `health_check` active health goes back to unknown, without
    /// `circuit_breaker` the circuit closes (with the event of any other transition). Everything
    /// else a backend has learned survives the change.
    pub fn settle_live_state(&self) {
        for b in &self.backends {
            if !self.checked {
                health::forget(&b.state);
            }
            b.state.breaker.set_policy(self.breaker.is_some());
            if self.breaker.is_none() && b.state.breaker.reset() {
                crate::events::breaker_changed(&b.state, breaker::Circuit::Closed);
            }
        }
    }

    /// [`Upstream::available`] through the stamp of `i`: a backend found fully in service at the
    /// current `epoch` is only checked against `max_connections`. Anything else takes the full
    /// check, and is stamped when nothing about it can change without bumping the epoch: no
    /// circuit other than closed (a half-open one rations probes), no slow-start ramp. `now` is
    /// read only when a stamp does not answer: the clock is the largest fixed cost of a stamped
    /// pick.
    fn available_at(&self, i: usize, now: &OnceCell<u64>, epoch: u64) -> bool {
        if self.stamps[i].load(Relaxed) == epoch {
            return self
                .max_connections
                .is_none_or(|m| self.backends[i].state.active.load(Relaxed) < m);
        }
        let now = *now.get_or_init(now_ms);
        let ok = self.available(i, now);
        if ok {
            let s = &self.backends[i].state;
            let closed = self.breaker.is_none() || s.breaker.state() == breaker::Circuit::Closed;
            let ramped = self.slow_start_ms == 0 || s.in_service_ms(now) >= self.slow_start_ms;
            if closed && ramped {
                self.stamps[i].store(epoch, Relaxed);
            }
        }
        ok
    }

    /// Chooses a backend, skipping those in `tried` when any other is available.
    pub fn pick(&self, ctx: &PickCtx, tried: &[usize]) -> Result<usize, NoBackend> {
        if self.backends.is_empty() {
            return Err(NoBackend::Empty);
        }
        let now = OnceCell::new();
        let epoch = availability_epoch();
        // The backend a sticky session names, while it can take the request.
        if let Some(i) = ctx.sticky {
            let b = &self.backends[i];
            if !b.backup && !tried.contains(&i) && self.available_at(i, &now, epoch) {
                return Ok(i);
            }
        }
        // With backups, the primaries first; the backups only when none of them can take it.
        let tier = |backup: bool| {
            let (backends, now) = (&self.backends, &now);
            move |i: usize| {
                (!self.has_backups || backends[i].backup == backup)
                    && !tried.contains(&i)
                    && self.available_at(i, now, epoch)
            }
        };
        let found = self
            .balancer
            .pick(&self.backends, ctx, &mut tier(false))
            .or_else(|| {
                self.has_backups
                    .then(|| self.balancer.pick(&self.backends, ctx, &mut tier(true)))?
            })
            .or_else(|| {
                // Every untried backend is unavailable: a second try on the same one is better
                // than failing a request that may succeed.
                (!tried.is_empty()).then(|| {
                    self.balancer.pick(&self.backends, ctx, &mut |i| {
                        self.available_at(i, &now, epoch)
                    })
                })?
            })
            .or_else(|| {
                // Fail-open (opt-in): when nothing is available, any backend still configured with
                // weight may be better than a certain 503.
                let open = self.passive.as_ref().is_some_and(|p| p.fail_open);
                open.then(|| {
                    self.balancer.pick(&self.backends, ctx, &mut |i| {
                        self.backends[i].weight > 0 && !self.backends[i].state.is_draining()
                    })
                })?
            });
        let found = match found {
            Some(i) if self.slow_start_ms > 0 => {
                Some(self.thin_ramping(i, ctx, tried, &now, epoch))
            }
            other => other,
        };
        let now = || *now.get_or_init(now_ms);
        let Some(i) = found else {
            let now = now();
            // Distinguish "all busy" (queue) from "none usable" (503 now).
            let busy = self.max_connections.is_some()
                && (0..self.backends.len()).any(|i| {
                    let s = &self.backends[i].state;
                    s.active.load(Relaxed) > 0 && self.usable_ignoring_limit(i, now)
                });
            return Err(if busy {
                NoBackend::Full
            } else {
                NoBackend::NoneAvailable
            });
        };
        // A current stamp means the circuit was closed (or there is none), where dispatching
        // changes nothing: skip reading the state, which at 10,000 backends is a cache miss.
        // Without a breaker policy nothing may drive the circuit (it was closed when the policy
        // went, see `settle_live_state`).
        if self.breaker.is_some() && self.stamps[i].load(Relaxed) != epoch {
            if let Some(change) = self.backends[i].state.breaker.on_dispatch(now()) {
                crate::events::breaker_changed(&self.backends[i].state, change);
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked() -> Option<crate::config::HealthCheckConfig> {
        Some(crate::config::HealthCheckConfig::default())
    }

    /// Backups (HAProxy's `backup`) take traffic only while no primary can, with every
    /// algorithm, and the primaries get it back as soon as one of them can.
    #[test]
    fn backups_serve_only_while_no_primary_can() {
        for algorithm in Algorithm::ALL {
            let cfg = UpstreamConfig {
                algorithm,
                health_check: checked(),
                ..UpstreamConfig::default()
            };
            let mut backends = balancer::test_support::backends(&[1, 1, 1, 1]);
            backends[2].backup = true;
            backends[3].backup = true;
            let u = Upstream::compile("t", &cfg, backends);
            let seen = |u: &Upstream| {
                (0..64u64)
                    .map(|h| {
                        u.pick(
                            &PickCtx::hashed(balancer::hash_bytes(&h.to_le_bytes())),
                            &[],
                        )
                        .unwrap()
                    })
                    .collect::<std::collections::BTreeSet<usize>>()
            };
            assert_eq!(seen(&u), [0, 1].into(), "{algorithm:?}: primaries only");
            u.backends[0].state.set_health(Health::Unhealthy);
            assert_eq!(seen(&u), [1].into(), "{algorithm:?}: one primary left");
            u.backends[1].state.set_draining(true);
            assert_eq!(seen(&u), [2, 3].into(), "{algorithm:?}: backups take over");
            // A retry after a backup failed goes to the other backup.
            assert_eq!(u.pick(&PickCtx::default(), &[2]), Ok(3), "{algorithm:?}");
            u.backends[1].state.set_draining(false);
            assert_eq!(seen(&u), [1].into(), "{algorithm:?}: back to the primary");
        }
    }

    #[test]
    fn a_sticky_session_keeps_its_backend_only_while_it_can_take_the_request() {
        let cfg = UpstreamConfig {
            health_check: checked(),
            ..UpstreamConfig::default()
        };
        let mut backends = balancer::test_support::backends(&[1, 1, 1]);
        backends[2].backup = true;
        let u = Upstream::compile("t", &cfg, backends);
        let stuck = |i| PickCtx {
            sticky: Some(i),
            ..PickCtx::default()
        };
        for _ in 0..6 {
            assert_eq!(u.pick(&stuck(1), &[]), Ok(1), "round robin would alternate");
        }
        // A retry after it failed goes elsewhere.
        assert_eq!(u.pick(&stuck(1), &[1]), Ok(0));
        // Unhealthy or draining: balanced as any other request.
        u.backends[1].state.set_health(Health::Unhealthy);
        assert_eq!(u.pick(&stuck(1), &[]), Ok(0));
        u.backends[1].state.set_health(Health::Healthy);
        u.backends[1].state.set_draining(true);
        assert_eq!(u.pick(&stuck(1), &[]), Ok(0));
        // A backup is never stuck to while a primary can serve.
        for _ in 0..4 {
            assert_eq!(u.pick(&stuck(2), &[]), Ok(0));
        }
    }

    #[test]
    fn unhealthy_and_draining_backends_are_skipped() {
        let cfg = UpstreamConfig {
            health_check: checked(),
            ..UpstreamConfig::default()
        };
        let backends = balancer::test_support::backends(&[1, 1, 1]);
        backends[0].state.set_health(Health::Unhealthy);
        backends[1].state.set_draining(true);
        let u = Upstream::compile("t", &cfg, backends);
        for _ in 0..5 {
            assert_eq!(u.pick(&PickCtx::default(), &[]), Ok(2));
        }
        u.backends[2].state.set_health(Health::Unhealthy);
        assert_eq!(
            u.pick(&PickCtx::default(), &[]),
            Err(NoBackend::NoneAvailable)
        );
    }

    /// Every way out of service bumps the availability epoch, so a backend stamped as in service
    /// by earlier picks is dropped by the very next pick.
    #[test]
    fn stamped_backends_leave_at_once_on_every_kind_of_change() {
        let cfg = UpstreamConfig {
            circuit_breaker: Some(crate::config::CircuitBreakerConfig {
                consecutive_failures: Some(1),
                ..Default::default()
            }),
            health_check: checked(),
            ..UpstreamConfig::default()
        };
        let u = Upstream::compile("t", &cfg, balancer::test_support::backends(&[1, 1]));
        let picks = |u: &Upstream| -> Vec<Result<usize, NoBackend>> {
            (0..4).map(|_| u.pick(&PickCtx::default(), &[])).collect()
        };
        assert_eq!(picks(&u), [Ok(0), Ok(1), Ok(0), Ok(1)]);
        let (a, b) = (&u.backends[0].state, &u.backends[1].state);
        a.set_health(Health::Unhealthy);
        assert_eq!(picks(&u), [Ok(1); 4], "unhealthy");
        a.set_health(Health::Healthy);
        b.set_draining(true);
        assert_eq!(picks(&u), [Ok(0); 4], "draining");
        b.set_draining(false);
        a.eject_until(now_ms() + 60_000);
        assert_eq!(picks(&u), [Ok(1); 4], "ejected");
        a.eject_until(0);
        let p = u.breaker.as_ref().unwrap();
        assert_eq!(
            b.breaker.record(p, false, now_ms()),
            Some(breaker::Circuit::Open)
        );
        assert_eq!(picks(&u), [Ok(0); 4], "circuit open");
        a.set_health(Health::Unhealthy);
        assert_eq!(picks(&u), [Err(NoBackend::NoneAvailable); 4], "none left");
    }

    #[test]
    fn slow_start_ramps_a_new_backend_in() {
        let cfg = UpstreamConfig {
            slow_start: Some(crate::config::Dur::millis(200)),
            ..UpstreamConfig::default()
        };
        let backends = balancer::test_support::backends(&[1, 1]);
        // The first backend has been available for longer than the ramp; the second just joined.
        backends[0].state.set_available_since(0);
        std::thread::sleep(std::time::Duration::from_millis(250));
        backends[1].state.set_available_since(now_ms());
        let u = Upstream::compile("t", &cfg, backends);
        let fresh = (0..1000)
            .filter(|_| u.pick(&PickCtx::default(), &[]) == Ok(1))
            .count();
        assert!(
            (1..250).contains(&fresh),
            "a backend that just joined took {fresh} of 1000"
        );
    }

    /// The algorithms slow start ramps (not consistent_hash).
    const RAMPED: [Algorithm; 5] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::P2cEwma,
    ];

    fn ramping(algorithm: Algorithm) -> UpstreamConfig {
        UpstreamConfig {
            algorithm,
            slow_start: Some(crate::config::Dur::millis(60_000)),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn slow_start_never_refuses_a_backend_that_is_alone() {
        for algorithm in RAMPED {
            let cfg = ramping(algorithm);
            let backends = balancer::test_support::backends(&[1, 1]);
            backends[0].state.set_draining(true);
            backends[1].state.set_available_since(now_ms());
            let u = Upstream::compile("t", &cfg, backends);
            let now = now_ms();
            assert!(u.available(1, now), "{algorithm:?}: ramping is available");
            assert!(u.ramp(1, now) < 0.2, "{algorithm:?}");
            for _ in 0..200 {
                assert_eq!(u.pick(&PickCtx::default(), &[]), Ok(1), "{algorithm:?}");
            }
        }
    }

    #[test]
    fn slow_start_scales_the_share_for_every_algorithm() {
        for algorithm in RAMPED {
            let cfg = ramping(algorithm);
            let backends = balancer::test_support::backends(&[1, 1, 1, 1]);
            for b in &backends[..3] {
                b.state.set_available_since(0);
            }
            backends[3].state.set_available_since(now_ms());
            let u = Upstream::compile("t", &cfg, backends);
            let mut counts = [0usize; 4];
            for _ in 0..4_000 {
                counts[u.pick(&PickCtx::default(), &[]).unwrap()] += 1;
            }
            // A full share would be 1,000; at a tenth of weight, about 1/31 of 4,000.
            assert!(
                (40..300).contains(&counts[3]),
                "{algorithm:?}: ramping backend took {counts:?}"
            );
        }
    }

    #[test]
    fn active_health_gates_traffic_only_while_a_check_is_configured() {
        let backends = balancer::test_support::backends(&[1, 1]);
        backends[0].state.set_health(Health::Unhealthy);
        let now = now_ms();
        let with = UpstreamConfig {
            health_check: checked(),
            ..UpstreamConfig::default()
        };
        let u = Upstream::compile("t", &with, backends.clone());
        assert!(!u.available(0, now));
        let u = Upstream::compile("t", &UpstreamConfig::default(), backends);
        assert!(u.available(0, now), "no check: a stale verdict is ignored");
    }

    #[test]
    fn settling_resets_only_what_a_removed_policy_left() {
        let breaker = UpstreamConfig {
            circuit_breaker: Some(crate::config::CircuitBreakerConfig {
                consecutive_failures: Some(1),
                ..Default::default()
            }),
            health_check: checked(),
            ..UpstreamConfig::default()
        };
        let u = Upstream::compile("t", &breaker, balancer::test_support::backends(&[1]));
        let s = u.backends[0].state.clone();
        s.set_health(Health::Unhealthy);
        s.breaker
            .record(u.breaker.as_ref().unwrap(), false, now_ms());
        s.requests_total.store(7, Relaxed);
        u.settle_live_state();
        assert_eq!(
            (s.health(), s.breaker.state()),
            (Health::Unhealthy, breaker::Circuit::Open),
            "policies kept: state kept"
        );
        let old = u;
        let u = Upstream::compile("t", &UpstreamConfig::default(), old.backends.clone());
        u.settle_live_state();
        assert_eq!(
            (s.health(), s.breaker.state()),
            (Health::Unknown, breaker::Circuit::Closed)
        );
        // A request still in flight on the old snapshot fails after the change: its policy is
        // gone, and the circuit stays closed.
        assert_eq!(
            s.breaker
                .record(old.breaker.as_ref().unwrap(), false, now_ms()),
            None
        );
        assert_eq!(s.breaker.state(), breaker::Circuit::Closed);
        assert_eq!(s.requests_total.load(Relaxed), 7, "counters kept");
        assert_eq!(u.pick(&PickCtx::default(), &[]), Ok(0));
    }
}
