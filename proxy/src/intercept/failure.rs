//! Errors raised inside Postgres. Where a failed embedding would go, the proxy puts a marker
//! text that Postgres rejects as a `real[]` ("malformed array literal"): the statement fails
//! exactly where and how an error of Postgres' own would (an explicit transaction is failed
//! too), and the proxy replaces that ErrorResponse with the real error on its way back.

use std::collections::HashMap;

use super::embedding::Failure;
use super::InterceptHook;
use crate::error::{Result, QUERY_CANCELED};
use crate::net::frame::Frame;
use crate::net::messages::error_response::{self, Fields};
use crate::net::messages::query::Query;
use crate::session::io::SessionIo;

/// Prefix of the marker text that stands for a failed embedding.
pub const ERROR_MARKER: &str = "pgml-proxy-error:";

/// A session's failures waiting for their marker's ErrorResponse.
#[derive(Default)]
pub struct Failures {
    waiting: HashMap<String, Failure>,
    next: u64,
    /// Why the proxy cancelled the running statement: replaces its 57014.
    cancelled: Option<Failure>,
}

impl Failures {
    /// Records a failure and returns the marker text that stands for it.
    pub fn remember(&mut self, failure: Failure) -> String {
        self.next += 1;
        let marker = format!("{ERROR_MARKER}{}", self.next);
        self.waiting.insert(marker.clone(), failure);
        marker
    }

    /// Records why the proxy is cancelling the running statement: its 57014 will say so.
    pub fn cancelling(&mut self, why: Failure) {
        self.cancelled = Some(why);
    }

    /// No failure waits for its marker: `replace` would change nothing.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.cancelled.is_none()
    }

    /// Forgets every failure (none can come back any more).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.cancelled = None;
    }

    /// The client's error for an upstream ErrorResponse caused by a marker; None otherwise.
    pub fn replace(&mut self, frame: &Frame) -> Option<Frame> {
        if self.waiting.is_empty() && self.cancelled.is_none() {
            return None;
        }
        let fields = Fields::decode(frame);
        if self.cancelled.is_some() && fields.sqlstate() == Some(QUERY_CANCELED) {
            return self.cancelled.take().map(|why| error_response::error(&why));
        }
        let message = fields.message()?;
        let start = message.find(ERROR_MARKER)?;
        let digits: String = message[start + ERROR_MARKER.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let failure = self.waiting.remove(&format!("{ERROR_MARKER}{digits}"))?;
        Some(error_response::error(&failure))
    }
}

impl InterceptHook {
    /// Fails the client's statement with `failure`, inside Postgres.
    pub(super) async fn fail_statement(
        &mut self,
        io: &mut SessionIo,
        failure: Failure,
    ) -> Result<()> {
        let marker = self.failures.remember(failure);
        let sql = format!("SELECT '{marker}'::real[]");
        io.send_upstream(&Query::encode(&sql));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::ProxyError;
    use crate::net::messages::error_response;

    #[test]
    fn the_marker_error_is_replaced_once_and_others_pass() {
        let mut failures = Failures::default();
        let marker = failures.remember(Arc::new(ProxyError::Bind(
            pgml_rewriter::BindError::NoParameter(3),
        )));
        let upstream = error_response::encode(
            "ERROR",
            "22P02",
            &format!("malformed array literal: \"{marker}\""),
        );
        let replaced = failures.replace(&upstream).unwrap();
        let fields = Fields::decode(&replaced);
        assert_eq!(fields.sqlstate(), Some("42P02"));
        assert_eq!(fields.message(), Some("there is no parameter $3"));
        assert_eq!(failures.replace(&upstream), None);
        let other = error_response::encode("ERROR", "42601", "syntax error");
        assert_eq!(failures.replace(&other), None);
    }
}
