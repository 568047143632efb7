//! What the relay's lean path may relay for this hook without calling its handlers (see
//! `SessionHook::client_plain`): the messages `on_client_message` / `on_server_message` would
//! relay unchanged, with their bookkeeping done here exactly as there. Each check mirrors the
//! branch of the handler it stands for; anything not clearly plain goes to the handler.

use std::collections::VecDeque;

use pgml_rewriter::mentions_pgml;

use super::InterceptHook;
use crate::net::messages::{bind, client_tag, server_tag};
use crate::session::state::SessionState;

impl InterceptHook {
    /// Nothing of the proxy's own is under way in the session: no wrapped statement, no skip
    /// to a Sync, no message of its own in the client's batch.
    fn quiet(&self) -> bool {
        !self.wrapped && !self.skip_to_sync && self.added.is_idle()
    }

    pub(super) fn plain_client(&self, tag: u8, body: &[u8], state: &SessionState) -> bool {
        if !self.quiet() {
            return false;
        }
        if state.upstream_skipping() && tag != client_tag::SYNC {
            // `on_client_message` relays it untouched: Postgres discards it.
            return true;
        }
        match tag {
            // `on_query`: text without `pgml` is relayed as it is.
            client_tag::QUERY => !mentions_pgml(body),
            // `on_bind`: neither an extension command's stand-in nor a statement the proxy
            // rewrote or prefetches for.
            client_tag::BIND => {
                if !self.extension_statements.is_empty() {
                    return false;
                }
                if self.statements.is_empty() && self.prefetch_statements.is_empty() {
                    return true;
                }
                let statement = bind::statement_name_of(body).unwrap_or_default();
                !self.statements.contains_key(statement)
                    && !self.prefetch_statements.contains_key(statement)
            }
            // `on_execute`: no extension command's portal to rename the tag of.
            client_tag::EXECUTE => self.extension_portals.is_empty(),
            // `on_describe` only notes what its ParameterDescription hides.
            client_tag::DESCRIBE | client_tag::SYNC | client_tag::FLUSH => true,
            _ => false,
        }
    }

    pub(super) fn on_plain_client_message(&mut self, tag: u8, body: &[u8], state: &SessionState) {
        if state.upstream_skipping() && tag != client_tag::SYNC {
            return;
        }
        if !state.in_step() {
            self.batch_clean = false;
        }
        self.batch_clean = match tag {
            client_tag::BIND | client_tag::EXECUTE => false,
            client_tag::FLUSH | client_tag::DESCRIBE => self.batch_clean,
            _ => true,
        };
        if tag == client_tag::DESCRIBE {
            // As `on_describe` (the relay offers only a Describe that decodes).
            if let Some((b'S', rest)) = body.split_first() {
                let name = rest.split(|&b| b == 0).next().unwrap_or_default();
                let hide = self.statements.get(name).map(|s| s.client_params);
                if let Some(batch) = self.describes.back_mut() {
                    batch.push_back(hide);
                }
            }
        }
        if tag == client_tag::SYNC {
            // `added` is idle (`quiet`): its `on_client_sync` has nothing to send.
            self.describes.push_back(VecDeque::new());
        }
    }

    pub(super) fn plain_server(&self, tag: u8) -> bool {
        if !self.added.is_idle() {
            return false;
        }
        match tag {
            // Possibly an upcall (`answer_if_upcall`).
            server_tag::NOTICE_RESPONSE => false,
            server_tag::ERROR_RESPONSE => self.failures.is_empty(),
            server_tag::COMMAND_COMPLETE => self.streams.is_empty() && self.pending_tags.is_empty(),
            server_tag::PARAMETER_DESCRIPTION => false,
            // `end_wrap`, `forget_answers` and the ends of streams have nothing to do.
            server_tag::READY_FOR_QUERY => {
                !self.wrapped
                    && self.answered.is_empty()
                    && self.streams.is_empty()
                    && !self.cursor_closed
            }
            _ => true,
        }
    }

    pub(super) fn on_plain_server_message(&mut self, tag: u8, state: &mut SessionState) {
        if tag != server_tag::READY_FOR_QUERY {
            return;
        }
        if let Some((path, elapsed)) = state.take_finished() {
            self.shared.metrics.statement_latency(path, elapsed);
        }
        if state.upstream_idle() {
            self.failures.clear();
            self.pending_tags.clear();
        }
        self.describes.pop_front();
        if self.describes.is_empty() {
            self.describes.push_back(VecDeque::new());
        }
    }
}
