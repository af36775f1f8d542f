//! Integration tests: real Switchyard servers and real demo backends on 127.0.0.1:0, spoken to
//! over real sockets. One test binary; a module per area.

mod support;

mod admin;
mod auth;
mod balancing;
mod cli;
mod cluster;
mod compress;
mod cors;
mod dataplane;
mod discovery;
mod grpc;
mod http2;
mod mirror;
mod observe;
mod pki;
mod relay;
mod resilience;
mod tcp;
mod tls;
mod ui;
mod websocket;
