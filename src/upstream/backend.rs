//! Live state of one backend: counters, latency EWMA, health, ejection, breaker and drain flags.
//!
//! A `BackendState` is keyed by (upstream, address) in the [`crate::state::Registry`] and outlives
//! configuration snapshots, so a reload never resets what has been learned. Everything here is
//! atomics: workers update it on the hot path without taking a lock another request could hold.

use super::breaker::Breaker;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Result of active health checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Bumped after any change that can take a backend out of service (health, drain, ejection,
/// circuit). [`crate::upstream::Upstream`] remembers, per backend, the epoch at which it last
/// found that backend fully in service, and trusts that stamp without reading the backend's
/// state while the epoch is unchanged: a pick among 10,000 backends then touches no backend
/// memory at all. Changes are rare (transitions, not checks), so a process-wide counter costs a
/// re-check per backend per change and needs no link from a state to the snapshots holding it.
static AVAILABILITY_EPOCH: AtomicU64 = AtomicU64::new(1);

/// The current availability epoch (never 0, so a zeroed stamp never matches).
pub fn availability_epoch() -> u64 {
    // Acquire pairs with the Release in `availability_changed`: whoever sees the new epoch also
    // sees the state change behind it, so a stamp is never taken on stale state at a new epoch.
    AVAILABILITY_EPOCH.load(Ordering::Acquire)
}

/// Invalidates every availability stamp; call after the state change is stored.
pub fn availability_changed() {
    AVAILABILITY_EPOCH.fetch_add(1, Ordering::Release);
}

/// Milliseconds on a process-wide monotonic clock, cheap to store in an atomic.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of a time already read (a clock read costs ~20 ns; the relay reads it twice per
/// request and passes it on).
pub fn ms_at(t: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

/// `repr(C, align(64))` with the fields a pick reads first: choosing among 10,000 backends touches
/// one cache line per candidate (load, health, drain, ejection, slow start, latency, breaker
/// state) instead of scattering those reads over the struct's seven lines.
#[repr(C, align(64))]
pub struct BackendState {
    // ---- first cache line: everything `Upstream::pick` and the balancers read ----
    pub active: AtomicU32,
    health: AtomicU8,
    /// Written through [`BackendState::set_draining`] only, which bumps the availability epoch.
    draining: AtomicBool,
    /// Passive health: the ejection deadline (0 = not ejected). Set through `eject_until`.
    ejected_until_ms: AtomicU64,
    /// When the backend joined the upstream or recovered from `unhealthy`; drives slow start.
    /// Set by `set_health` (or `set_available_since`, which bumps the availability epoch too).
    available_since_ms: AtomicU64,
    /// Peak-EWMA of response-head latency in microseconds, stored as f64 bits.
    ewma_us: AtomicU64,
    ewma_at_ms: AtomicU64,
    /// Its state byte comes first (`repr(C)`), inside this line.
    pub breaker: Breaker,
    // ---- the rest: counters written once per response, read by metrics and the API ----
    pub consecutive_failures: AtomicU32,
    pub ejections: AtomicU32,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub health_changes: AtomicU64,
    pub circuit_opens: AtomicU64,
    /// Responses by status class (index 1..=5 for 1xx..5xx; index 0 counts exchanges that
    /// failed without a response from the backend).
    pub responses: [AtomicU64; 6],
    /// Response-head latency histogram: counts per bucket of [`LATENCY_BUCKETS_S`], and the sum.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    pub latency_sum_us: AtomicU64,
    pub upstream: String,
    pub address: String,
    /// Unique for the life of the process (a reload keeps the state, and so the id, of an
    /// upstream's address): what the relay's idle connections are kept under.
    pub id: u64,
    /// The upstream's `max_connections` queue, set when the state is first compiled: a backend
    /// that turns healthy wakes it (room appeared that no finishing request would announce).
    pub queue: std::sync::OnceLock<Arc<super::queue::Queue>>,
}

/// Upper bounds (seconds) of the latency histogram buckets; +Inf is implied by the count.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Decay time of the latency EWMA: long enough to smooth noise, short enough that a backend which
/// slows down loses traffic within a few seconds (linkerd uses 10s; we favour reaction).
const EWMA_DECAY_MS: f64 = 5_000.0;

impl BackendState {
    pub fn new(upstream: &str, address: &str) -> Arc<Self> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Arc::new(BackendState {
            id: IDS.fetch_add(1, Relaxed),
            upstream: upstream.to_string(),
            address: address.to_string(),
            active: AtomicU32::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at_ms: AtomicU64::new(now_ms()),
            health: AtomicU8::new(Health::Unknown as u8),
            draining: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            available_since_ms: AtomicU64::new(now_ms()),
            breaker: Breaker::default(),
            health_changes: AtomicU64::new(0),
            circuit_opens: AtomicU64::new(0),
            responses: Default::default(),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            queue: std::sync::OnceLock::new(),
        })
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    /// Sets the health; returns the previous value so callers can emit a transition event.
    /// Leaving `unhealthy` is a recovery and restarts the slow-start ramp; a first verdict
    /// (`unknown` → `healthy`) is not: the backend was already in service, and its ramp (if it
    /// has one) runs from when it joined.
    pub fn set_health(&self, h: Health) -> Health {
        let prev = Health::from_u8(self.health.swap(h as u8, Relaxed));
        if prev != h {
            if prev == Health::Unhealthy {
                self.available_since_ms.store(now_ms(), Relaxed);
                // What it measured while failing says nothing about it now: a backend back from
                // a stall would otherwise keep the stall's latency, which p2c_ewma never picks,
                // so no faster sample could ever replace it.
                self.ewma_us.store(0f64.to_bits(), Relaxed);
            }
            availability_changed();
        }
        prev
    }

    /// When the backend (re)joined the eligible set, in [`now_ms`] milliseconds.
    pub fn available_since_ms(&self) -> u64 {
        self.available_since_ms.load(Relaxed)
    }

    /// How long the backend has been in service at `now`, for slow start: since it joined or
    /// recovered, or `u64::MAX` for one in service from the start.
    pub fn in_service_ms(&self, now: u64) -> u64 {
        match self.available_since_ms() {
            0 => u64::MAX,
            since => now.saturating_sub(since),
        }
    }

    /// Restarts the slow-start ramp from `ms`; 0 = in service from the start, never ramped.
    pub fn set_available_since(&self, ms: u64) {
        self.available_since_ms.store(ms, Relaxed);
        availability_changed();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn set_draining(&self, on: bool) {
        if self.draining.swap(on, Relaxed) != on {
            availability_changed();
        }
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    /// The ejection deadline in process milliseconds (0 = never ejected).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Relaxed)
    }

    /// Takes the backend out of service until `deadline_ms` (see [`now_ms`]).
    pub fn eject_until(&self, deadline_ms: u64) {
        self.ejected_until_ms.store(deadline_ms, Relaxed);
        availability_changed();
    }

    /// Peak-EWMA latency in microseconds as last measured.
    pub fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Relaxed))
    }

    /// The estimate as of `now_ms`: decayed towards zero for the time no sample came (as
    /// linkerd's peak-EWMA), so a backend left unpicked because of one slow sample is tried
    /// again once its estimate falls under the others' (990 ms under 1 ms in ~35 s), and a
    /// fresh sample then says what it is worth now.
    pub fn ewma_us_at(&self, now_ms: u64) -> f64 {
        let idle = now_ms.saturating_sub(self.ewma_at_ms.load(Relaxed));
        let v = self.ewma_us();
        if idle == 0 || v == 0.0 {
            return v;
        }
        v * (-(idle as f64) / EWMA_DECAY_MS).exp()
    }

    /// Records one response-head latency. Peak-EWMA: a slower sample replaces the estimate at once
    /// (so a degrading backend is avoided immediately); faster samples blend in with a decay that
    /// depends on the time since the last sample. Races between workers lose a sample at worst.
    /// `now_ms`: [`now_ms`] when the response head arrived.
    pub fn observe_latency(&self, us: f64, now_ms: u64) {
        let secs = us / 1e6;
        let b = LATENCY_BUCKETS_S
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[b].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us as u64, Relaxed);
        let now = now_ms;
        let last = self.ewma_at_ms.swap(now, Relaxed);
        let prev = self.ewma_us();
        let next = if us > prev || prev == 0.0 {
            us
        } else if now <= last {
            // No time has passed, so a faster sample has no weight (exp(0) = 1).
            prev
        } else {
            let w = (-((now.saturating_sub(last)) as f64) / EWMA_DECAY_MS).exp();
            prev * w + us * (1.0 - w)
        };
        self.ewma_us.store(next.to_bits(), Relaxed);
    }
}

/// One backend as a snapshot sees it: address, weight, and the shared live state.
#[derive(Clone)]
pub struct Backend {
    pub address: String,
    /// Literal socket address when the configured address is `IP:port`; names resolve at connect.
    pub socket: Option<SocketAddr>,
    pub weight: u32,
    /// A standby: picked only when no primary backend can take the request.
    pub backup: bool,
    pub state: Arc<BackendState>,
}

// The pick-time fields must stay in the first cache line (see `BackendState`).
const _: () = assert!(std::mem::offset_of!(BackendState, breaker) + 16 <= 64);
