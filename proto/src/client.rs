//! What every caller of the coordinator attaches to a request: the bearer token and a
//! deadline. The CLI's client commands and the worker agent both build requests here, so the
//! header's spelling and the token's check live in one place (the coordinator's side is
//! `linesweep_coordinator::server::check_token`).

use std::time::Duration;

use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The token is not usable in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token cannot be sent in a header (it holds control characters)")
    }
}

impl std::error::Error for InvalidToken {}

/// A caller's credentials, checked once.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    header: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// `Bearer <token>`, or nothing (a coordinator without a token).
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        let header = match token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| InvalidToken)?),
            None => None,
        };
        Ok(Self { header })
    }

    /// `msg` as a request with the token and a deadline of `timeout`.
    pub fn request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(timeout);
        if let Some(h) = &self.header {
            r.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_travels_as_a_bearer_header() {
        let c = Credentials::new(Some("t0k")).unwrap();
        let r = c.request((), Duration::from_secs(1));
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer t0k");
        let none = Credentials::new(None)
            .unwrap()
            .request((), Duration::from_secs(1));
        assert!(none.metadata().get(AUTHORIZATION).is_none());
        assert_eq!(Credentials::new(Some("a\nb")).unwrap_err(), InvalidToken);
    }
}
