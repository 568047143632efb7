//! ParameterDescription ('t', server): the parameter types of a prepared statement.

use bytes::{BufMut, BytesMut};

use super::server_tag;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// Decodes the parameter type OIDs.
pub fn decode(frame: &Frame) -> Result<Vec<u32>> {
    let bad = || ProxyError::UpstreamProtocol("malformed ParameterDescription".into());
    let body = frame.body();
    let count = body.get(..2).ok_or_else(bad)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    let oids = body.get(2..2 + count * 4).ok_or_else(bad)?;
    Ok(oids
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Encodes a ParameterDescription.
pub fn encode(types: &[u32]) -> Frame {
    let mut body = BytesMut::with_capacity(2 + types.len() * 4);
    body.put_u16(types.len() as u16);
    for oid in types {
        body.put_u32(*oid);
    }
    Frame::new(server_tag::PARAMETER_DESCRIPTION, &body)
}

/// The description cut to its first `n` parameters (hides the proxy's own).
pub fn truncate(frame: &Frame, n: usize) -> Result<Frame> {
    let types = decode(frame)?;
    Ok(encode(&types[..n.min(types.len())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_description_hides_the_proxy_parameters() {
        let cut = truncate(&encode(&[25, 3802, 1021]), 2).unwrap();
        assert_eq!(decode(&cut).unwrap(), vec![25, 3802]);
        assert!(decode(&Frame::new(b't', &[0, 2, 0, 0, 0, 25])).is_err());
        let many: Vec<u32> = vec![25; 40_000];
        assert_eq!(decode(&encode(&many)).unwrap().len(), 40_000);
    }
}
