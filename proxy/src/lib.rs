//! pgml-proxy: the listener, relay, session state, interception and CLI wiring.
