//! ReadyForQuery ('Z', server): the end of a response cycle, with the transaction status.

use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// The backend's transaction status as reported in ReadyForQuery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    #[default]
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block (queries rejected until rollback).
    Failed,
}

impl TransactionStatus {
    /// Decodes a ReadyForQuery frame.
    pub fn decode(frame: &Frame) -> Result<Self> {
        Self::from_body(frame.body())
    }

    /// Decodes a ReadyForQuery message's body.
    pub fn from_body(body: &[u8]) -> Result<Self> {
        match body {
            [b'I'] => Ok(TransactionStatus::Idle),
            [b'T'] => Ok(TransactionStatus::InTransaction),
            [b'E'] => Ok(TransactionStatus::Failed),
            other => Err(ProxyError::UpstreamProtocol(format!(
                "invalid ReadyForQuery body {other:?}"
            ))),
        }
    }

    /// A ReadyForQuery message with this status.
    pub fn encode(self) -> Frame {
        let status = match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        };
        Frame::new(super::server_tag::READY_FOR_QUERY, &[status])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_decoded() {
        let z = |b: u8| Frame::new(b'Z', &[b]);
        assert_eq!(
            TransactionStatus::decode(&z(b'I')).unwrap(),
            TransactionStatus::Idle
        );
        assert_eq!(
            TransactionStatus::decode(&z(b'T')).unwrap(),
            TransactionStatus::InTransaction
        );
        assert_eq!(
            TransactionStatus::decode(&z(b'E')).unwrap(),
            TransactionStatus::Failed
        );
        assert!(TransactionStatus::decode(&z(b'?')).is_err());
        for status in [
            TransactionStatus::Idle,
            TransactionStatus::InTransaction,
            TransactionStatus::Failed,
        ] {
            assert_eq!(TransactionStatus::decode(&status.encode()).unwrap(), status);
        }
    }
}
