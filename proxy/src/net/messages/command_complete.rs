//! CommandComplete ('C', server): the command tag that ends a statement's result.

use super::server_tag;
use crate::net::frame::Frame;

/// Encodes a CommandComplete with `tag` (e.g. "SELECT 1").
pub fn encode(tag: &str) -> Frame {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    Frame::new(server_tag::COMMAND_COMPLETE, &body)
}
