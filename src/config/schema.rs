//! The configuration file as plain serde types, one-to-one with the contract's schema.
//!
//! These types only describe what was written; [`super::validate`] checks them and
//! [`crate::state`] compiles them into the runtime types the data plane uses. Every default is
//! documented next to the function that supplies it, with its reason.

use super::duration::Dur;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The whole file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Worker threads; default: the CPUs this process may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub admin: AdminConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub log: LogConfig,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:5000`: the brief's UI address, loopback so nothing is exposed by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ListenerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Largest request body accepted (`"10MiB"`); larger ones get 413. Default: no limit, as
    /// HAProxy and Envoy, because bodies are streamed and cost no memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<String>,
    /// Hand a connection to Switchyard only once its first bytes arrived (`TCP_DEFER_ACCEPT`,
    /// as NGINX's `deferred` and HAProxy's `defer-accept`). Default: on for HTTP listeners,
    /// since in HTTP and TLS the client always speaks first; off for `tcp` ones, whose protocol
    /// may wait for the server (MySQL, SMTP). *restart*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_accept: Option<bool>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the real client,
    /// as sent by HAProxy's `send-proxy` or an AWS NLB; one without is closed. *restart*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
    /// Time a client has to send a request head, and then its body, from when the connection
    /// (or its previous request) ended; a request begun and not finished in it gets 408.
    /// Default 30s (HAProxy's `timeout http-request` is often 10s, NGINX's
    /// `client_header_timeout` 60s). *restart*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<Dur>,
    /// Proxies in front (a CDN, a cloud load balancer) whose `X-Forwarded-For` names the real
    /// client, as addresses or CIDR blocks. From one of them, the client is the rightmost
    /// address in it that is not itself a trusted proxy (NGINX's `set_real_ip_from` with
    /// `real_ip_recursive on`): used for `client_ip` hashing and splits, rate limits and the
    /// access log. Default: none, since a client can write the header. *restart*
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// `keep` (default) or `reject`: with `reject`, a request path holding an encoded slash or
    /// backslash (`%2F`, `%5C`), a `\`, or an empty segment (`//`) gets 400, since backends
    /// differ on what those mean and a guarded prefix could be reached by them (Envoy's
    /// `path_with_escaped_slashes_action: REJECT_REQUEST`). *restart*
    #[serde(default, skip_serializing_if = "is_default")]
    pub ambiguous_paths: AmbiguousPaths,
    /// `http` (default) or `tcp`: each connection's bytes are relayed to a backend unread, as
    /// HAProxy's `mode tcp` and NGINX's `stream` do (databases, brokers, TLS passed through).
    /// *restart*
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ListenerMode,
    /// `tcp`: the upstream taking the connections (those whose TLS server name matches no
    /// `sni_routes` entry, when there are some). Changed live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `tcp`: connections by TLS server name (SNI). Without `tls` on the listener the name is
    /// read from the ClientHello and the TLS session passes through to the backend untouched
    /// (HAProxy's `req.ssl_sni`, NGINX's `ssl_preread`, Traefik's `HostSNI`). Changed live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRoute>,
    /// `tcp`: each backend connection starts with a PROXY protocol header naming the client,
    /// `"v1"` (text) or `"v2"` (binary), as HAProxy's `send-proxy`/`send-proxy-v2` and NGINX's
    /// `proxy_protocol on`; the backend must expect it. Default: none. Changed live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_proxy_protocol: Option<String>,
    /// `tcp`: a connection where nothing moves either way for this long is closed. Default 10
    /// minutes, NGINX's `proxy_timeout` (HAProxy's `timeout client`/`server` are set to hours
    /// for database sessions); dead peers are found sooner by TCP keepalive. Changed live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// `tcp`: only clients in these blocks may connect; others are closed at once (NGINX's
    /// `allow` in a `stream` server). Default: everyone. Changed live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    /// `tcp`: clients in these blocks are closed at once, even if `ip_allow` names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
}

/// What an HTTP listener does with path spellings backends read differently.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguousPaths {
    #[default]
    Keep,
    Reject,
}

/// What a listener speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    #[default]
    Http,
    Tcp,
}

/// One entry of a `tcp` listener's `sni_routes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SniRoute {
    /// Exact names or `*.example.com` (one label or more in front of it).
    pub hosts: Vec<String>,
    pub upstream: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ListenerTls {
    #[serde(default)]
    pub certificates: Vec<CertPair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The whole path, exactly (NGINX's `location =`, Envoy's `path`, Traefik's `Path`);
    /// instead of `path_prefix`. Among a host's routes an exact path comes before any prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests with one of these methods match (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Only requests carrying these headers match: a value to equal, or `"*"` for any value
    /// (Envoy's route header matchers, Traefik's `Header` rule).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_headers: BTreeMap<String, String>,
    /// The upstream that serves the route; empty when `split` names several instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream: String,
    /// Traffic shared across upstreams by weight (Envoy's `weighted_clusters`, NGINX's
    /// `split_clients`), for canaries and blue/green moves; instead of `upstream`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitArm>,
    /// What keeps a client on one side of a `split`: `request` (default: each request drawn
    /// anew), `client_ip`, `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_by: Option<String>,
    /// Replaces the matched `path_prefix` in the path sent upstream (Envoy's `prefix_rewrite`):
    /// `path_prefix = "/api/"` with `rewrite_prefix = "/"` sends `/api/users` as `/users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    /// Headers set on (replacing any the client sent) or removed from requests sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRules>,
    /// Headers set on or removed from responses to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRules>,
    /// Requests admitted per second, per client IP or for the whole route; over it, 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Only clients in these blocks (`"10.0.0.0/8"`, an address) may use the route; the rest
    /// get 403. Default: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    /// Clients in these blocks get 403, even if `ip_allow` names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    /// The whole exchange for this route's requests, in place of the upstream's
    /// `timeouts.request` (Envoy's route `timeout`, NGINX's per-location `proxy_read_timeout`):
    /// a long export or upload beside quick API calls on one upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Answered by Switchyard itself instead of an upstream: a redirect, a maintenance page, a
    /// path refused (NGINX's `return`, HAProxy's `http-request redirect`/`return`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondConfig>,
    /// A copy of the route's requests (all, or `percent` of them) sent to another upstream,
    /// its answer dropped: Envoy's `request_mirror_policies`, NGINX's `mirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Responses gzip-compressed for clients that accept it (NGINX's `gzip`, Envoy's
    /// compressor, Caddy's `encode`); `compress = {}` takes every default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressConfig>,
    /// Each request is first put to another upstream, which allows it (2xx) or answers the
    /// client itself: NGINX's `auth_request`, Traefik's `forwardAuth`, Envoy's `ext_authz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Cross-origin requests from browsers (Envoy's CORS filter, Traefik's
    /// `accessControlAllow*` headers): preflights answered here, responses given the
    /// `Access-Control-*` headers for the origins allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
}

/// Which origins may use a route from a browser, and with what.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CorsConfig {
    /// `"https://app.example.com"`, `"https://*.example.com"` (any subdomain), or `"*"`.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; default: the one it asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; default: those it asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read beyond the safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether requests may carry cookies and `Authorization` (never with `"*"`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight's answer; default: the browser's (5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
}

/// A route's external authorization: where each request is asked about first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuthConfig {
    /// The upstream that decides: an ordinary upstream, with its own balancing, health checks,
    /// breakers and timeouts.
    pub upstream: String,
    /// The path (and query) asked, by `GET`: `"/verify"`, `"/oauth2/auth"`.
    pub path: String,
    /// The client's headers sent with the question; default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Vec<String>>,
    /// Headers of an allowing answer put on the request sent upstream (`x-user-id`); lines the
    /// client sent under these names are removed first, so a client cannot pose as a user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
    /// Headers of an allowing answer added to the response the client gets (`set-cookie`, for
    /// a service that refreshes its session): Traefik's `addAuthCookiesToResponse`, NGINX's
    /// `auth_request_set` with `add_header`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_headers: Vec<String>,
}

/// Which responses a route compresses, and how hard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompressConfig {
    /// Responses declaring fewer bytes than this are sent as they are (default 1024).
    #[serde(default = "compress_min_length")]
    pub min_length: u64,
    /// Media types compressed: `"text/html"`, or `"text/*"` for a whole type.
    #[serde(default = "compress_types")]
    pub content_types: Vec<String>,
    /// Deflate level, 1 (fastest: zlib-rs's quick mode) to 9 (smallest); default 1.
    #[serde(default = "compress_level")]
    pub level: u32,
}

fn compress_min_length() -> u64 {
    1024
}
fn compress_level() -> u32 {
    1
}
fn compress_types() -> Vec<String> {
    [
        "text/html",
        "text/plain",
        "text/css",
        "text/javascript",
        "text/xml",
        "application/javascript",
        "application/json",
        "application/xml",
        "application/xhtml+xml",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// A response a route gives itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RespondConfig {
    pub status: u16,
    /// `Location`, with variables: `"https://new.example.com${request_uri}"`. Required for
    /// redirects (301, 302, 303, 307, 308).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Default `text/plain; charset=utf-8` when there is a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Where a route's mirrored requests go, and which share of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MirrorConfig {
    pub upstream: String,
    /// Percent of the route's requests copied, above 0 and at most 100 (default: 100).
    #[serde(default = "all_percent")]
    pub percent: f64,
}

fn all_percent() -> f64 {
    100.0
}

/// One side of a route's `split`: an upstream and its share, `weight` of the arms' sum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SplitArm {
    pub upstream: String,
    pub weight: u32,
}

/// A token bucket: `requests_per_second` refill, `burst` deep (default: one second's worth).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RateKey>,
}

/// What one bucket counts: each client IP (default), or every request on the route.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    #[default]
    ClientIp,
    Route,
}

/// Header edits of a route: `remove` first, then `set` (NGINX's `proxy_set_header` and
/// `add_header`, HAProxy's `http-request`/`http-response set-header` and `del-header`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Random,
    P2cEwma,
    ConsistentHash,
}

impl Algorithm {
    /// Every algorithm, for tests and benchmarks that cover them all.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::P2cEwma,
        Algorithm::ConsistentHash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::Random => "random",
            Algorithm::P2cEwma => "p2c_ewma",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2,
    H2c,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct UpstreamConfig {
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Sticky sessions: a cookie set on the first response names the backend that later
    /// requests bringing it go to, while it is available (HAProxy's `cookie ... insert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
}

/// The cookie of sticky sessions. Defaults: `switchyard_backend`, a session cookie (no
/// `Max-Age`), `HttpOnly`, not `Secure`, no `SameSite`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StickyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// `Strict`, `Lax` or `None` (which browsers take only with `secure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub address: String,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// Draining: no new requests, in-flight ones finish; the weight is kept for when it returns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// Takes traffic only while no other backend of the upstream can (HAProxy's `backup`,
    /// NGINX's `backup`): a standby for when every primary is down, draining or ejected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

fn one() -> u32 {
    1
}
fn is_one(w: &u32) -> bool {
    *w == 1
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct UpstreamTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DiscoveryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
}

/// Upstream timeouts. Defaults: connect 2s (a loopback or LAN connect that takes longer is a dead
/// host; HAProxy's examples use 5s), request 30s (time until the response head, as HAProxy's
/// `timeout server`), idle 60s (pooled connection kept this long; under typical backend
/// keep-alive timeouts of 75s so Switchyard closes first and never reuses a closing socket).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Http,
    Tcp,
    Grpc,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HealthCheckConfig {
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: CheckKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PassiveHealthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
    /// When nothing is available, send to every backend anyway instead of answering 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CircuitBreakerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RetryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Dur>,
    /// Largest request body kept in memory so it can be replayed on another backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replay_body: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ClusterConfig {
    #[serde(default)]
    pub etcd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// This instance's name in the cluster (`{prefix}/instances/{id}`); by default the host
    /// name and the admin port, so a restart comes back as the same instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessFormat {
    #[default]
    Json,
    Combined,
    Off,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LogConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// OTLP/HTTP collector base URL (e.g. `http://127.0.0.1:4318`): export a span per request
    /// and per upstream attempt. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}
