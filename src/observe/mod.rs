//! Observability: Prometheus metrics ([`metrics`]), the access log ([`access_log`]) and trace
//! context with OTLP export ([`otlp`]).

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod request;
