//! Sticky sessions by an inserted cookie (HAProxy's `cookie NAME insert`, Traefik's
//! `sticky.cookie`, Envoy's cookie-based stateful sessions).
//!
//! The first response from an upstream with `sticky` sets a cookie naming the backend that
//! served it; later requests bringing the cookie go to that backend for as long as it is
//! available (healthy, circuit admitting, not draining, not ejected, not full). When it is not,
//! the request is balanced as any other and the response names the new backend, so a client
//! moves once and then sticks again. A backup backend is never stuck to: clients return to the
//! primaries when those recover.
//!
//! The cookie's value is a hash of the backend's address, not the address: it is the same on
//! every Switchyard instance and across restarts and reloads (a cluster needs no shared state),
//! and it does not show the inside of the network to clients. A value that names no current
//! backend (a removed one, or a forged value) is ignored.

use super::backend::Backend;
use super::balancer::hash_bytes;
use crate::config::StickyConfig;
use http::HeaderValue;
use std::collections::HashMap;

/// Cookie name when the configuration gives none.
pub const DEFAULT_COOKIE: &str = "switchyard_backend";

#[derive(Debug)]
pub struct Sticky {
    pub cookie: String,
    /// The `Set-Cookie` value for each backend, by index.
    set: Box<[HeaderValue]>,
    /// Backend index by cookie value.
    by_value: HashMap<u64, usize>,
}

impl Sticky {
    pub fn new(cfg: &StickyConfig, backends: &[Backend]) -> Sticky {
        let cookie = cfg.cookie.clone().unwrap_or_else(|| DEFAULT_COOKIE.into());
        // Path=/ so the whole site sticks; HttpOnly by default since scripts have no use for it.
        let mut attrs = String::from("; Path=/");
        if let Some(age) = cfg.max_age {
            attrs.push_str(&format!("; Max-Age={}", age.get().as_secs()));
        }
        if cfg.http_only != Some(false) {
            attrs.push_str("; HttpOnly");
        }
        if cfg.secure == Some(true) {
            attrs.push_str("; Secure");
        }
        if let Some(s) = &cfg.same_site {
            attrs.push_str("; SameSite=");
            attrs.push_str(s);
        }
        let mut by_value = HashMap::with_capacity(backends.len());
        let set = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let v = value_of(&b.address);
                by_value.entry(v).or_insert(i);
                HeaderValue::try_from(format!("{cookie}={v:016x}{attrs}"))
                    .unwrap_or(HeaderValue::from_static(""))
            })
            .collect();
        Sticky {
            cookie,
            set,
            by_value,
        }
    }

    /// The backend a request's `Cookie` lines name, if any current one.
    pub fn backend_for<'a>(&self, cookies: impl Iterator<Item = &'a [u8]>) -> Option<usize> {
        let v = crate::proxy::cookie_value(cookies, &self.cookie)?;
        if v.len() != 16 {
            return None;
        }
        let v = u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()?;
        self.by_value.get(&v).copied()
    }

    /// The `Set-Cookie` value naming backend `i`.
    pub fn set_cookie(&self, i: usize) -> &HeaderValue {
        &self.set[i]
    }
}

/// The cookie value of a backend: stable across instances, restarts and reloads.
fn value_of(address: &str) -> u64 {
    hash_bytes(address.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_names_a_backend_by_a_stable_hash_and_unknown_values_name_none() {
        let backends = crate::upstream::balancer::test_support::backends(&[1, 1]);
        let cfg = StickyConfig {
            cookie: Some("sid".into()),
            secure: Some(true),
            same_site: Some("Lax".into()),
            ..StickyConfig::default()
        };
        let s = Sticky::new(&cfg, &backends);
        let set = s.set_cookie(1).to_str().unwrap().to_string();
        assert!(set.starts_with("sid="), "{set}");
        assert!(
            set.ends_with("; Path=/; HttpOnly; Secure; SameSite=Lax"),
            "{set}"
        );
        assert!(!set.contains("10.0.0.2"), "the address is not shown: {set}");
        // What the client sends back, among other cookies, names the same backend.
        let value = set.split(';').next().unwrap();
        let line = format!("a=1; {value}; b=2");
        assert_eq!(s.backend_for([line.as_bytes()].into_iter()), Some(1));
        // Another instance (or a reload) computes the same value.
        let again = Sticky::new(&cfg, &backends[1..]);
        assert_eq!(again.backend_for([line.as_bytes()].into_iter()), Some(0));
        for bad in ["sid=0123456789abcdef", "sid=zz", "sid=", "other=1"] {
            assert_eq!(s.backend_for([bad.as_bytes()].into_iter()), None, "{bad}");
        }
    }
}
