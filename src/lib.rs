//! Switchyard: a load balancer and reverse proxy for microservices.
//!
//! A request's path through the crate: a [`listener`] worker accepts the connection and hyper
//! parses HTTP/1.1 or HTTP/2; [`proxy::handle`] loads the configuration [`state::Snapshot`] once,
//! routes by host and path ([`proxy::router`]), asks the upstream to pick a backend
//! ([`upstream::Upstream::pick`]: the balancer ranks, availability is decided in one place),
//! forwards on a per-worker pooled connection ([`proxy::pool`]), retries where safe, and streams the
//! response back while recording the outcome (latency EWMA, breaker, passive health, counters).
//!
//! The control plane — the [`admin`] API, SIGHUP and file reloads, [`upstream::health`] checkers —
//! changes configuration only through [`state::Shared::apply`]: validate whole, compile, swap.

pub mod admin;
pub mod alloc;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod events;
pub mod listener;
pub mod observe;
pub mod proxy;
pub mod server;
pub mod state;
pub mod upstream;
