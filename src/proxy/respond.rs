//! Routes that answer themselves (`respond`): a redirect to a new domain or to HTTPS, a
//! maintenance page, a path refused outright — NGINX's `return`, HAProxy's `http-request
//! redirect` and `return`. Nothing is forwarded; the route's `ip_allow`/`ip_deny`, rate limit and
//! response edits still apply.

use super::body::RespBody;
use super::template::{Template, Vars};
use crate::config::RespondConfig;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Largest request body read and dropped before a route's own answer; past it, the answer
/// closes the connection instead of reading on.
pub const MAX_DISCARD: u64 = 1 << 20;

/// A route's response, compiled once per snapshot.
#[derive(Debug)]
pub struct Respond {
    status: StatusCode,
    location: Option<Location>,
    body: Bytes,
    content_type: Option<HeaderValue>,
}

#[derive(Debug)]
enum Location {
    Fixed(HeaderValue),
    Template(Template),
}

impl Respond {
    /// `None` when the configuration does not hold (validation refused it already).
    pub fn compile(c: &RespondConfig) -> Option<Respond> {
        let location = match &c.location {
            None => None,
            Some(l) => Some(match Template::parse(l).ok()? {
                Some(t) => Location::Template(t),
                None => Location::Fixed(HeaderValue::from_str(l).ok()?),
            }),
        };
        let body = Bytes::from(c.body.clone().unwrap_or_default());
        let content_type = match &c.content_type {
            Some(t) => Some(HeaderValue::from_str(t).ok()?),
            None if !body.is_empty() => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
            None => None,
        };
        Some(Respond {
            status: StatusCode::from_u16(c.status).ok()?,
            location,
            body,
            content_type,
        })
    }

    /// The response to one request; `head`: to a HEAD request, which gets no body.
    pub fn response(&self, vars: &Vars<'_>, head: bool) -> Response<RespBody> {
        // 204 and 304 never have one either (validation refuses one), and no content type.
        let bodiless = matches!(self.status.as_u16(), 204 | 304);
        let mut r = Response::new(if head || bodiless {
            RespBody::empty()
        } else {
            RespBody::full(self.body.clone())
        });
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        match &self.location {
            Some(Location::Fixed(v)) => {
                h.insert(header::LOCATION, v.clone());
            }
            Some(Location::Template(t)) => {
                let mut v = Vec::new();
                if t.expand(vars, &mut v) {
                    if let Ok(v) = HeaderValue::from_bytes(&v) {
                        h.insert(header::LOCATION, v);
                    }
                }
            }
            None => {}
        }
        if let Some(t) = self.content_type.as_ref().filter(|_| !bodiless) {
            h.insert(header::CONTENT_TYPE, t.clone());
        }
        if head && !bodiless {
            // What a GET would have carried (RFC 9110 §9.3.2).
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        r
    }
}
