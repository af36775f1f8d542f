//! Observability: Prometheus metrics ([`metrics`]), the access log ([`access_log`]), trace
//! context with OTLP export ([`otlp`]) and warnings rate-limited by a [`throttle::Throttle`].

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod request;
pub mod throttle;
