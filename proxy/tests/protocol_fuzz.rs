//! Property tests over the protocol layer: every decoder on arbitrary frames, encoders that
//! round-trip, the session state on arbitrary server messages and against a reference of
//! Postgres' protocol loop (`backend`: failed batches, COPY, a Sync or Query where Postgres
//! ignores or skips it), and the relay loop itself over real sockets with arbitrary client
//! message sequences. None may panic; what the relay forwards is the client's bytes, exactly,
//! up to the first message it refuses.
//! `make fuzz` runs these with many more cases (PROPTEST_CASES) and fresh seeds; inputs that
//! once failed are kept below as regression tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use bytes::BytesMut;
use pgml_proxy::net::frame::{take_frame, take_startup_packet, Direction, Frame};
use pgml_proxy::net::messages::bind::{Bind, ExtraValue};
use pgml_proxy::net::messages::client::ClientMessage;
use pgml_proxy::net::messages::close::Close;
use pgml_proxy::net::messages::describe::Describe;
use pgml_proxy::net::messages::error_response::Fields;
use pgml_proxy::net::messages::parameter_status::ParameterStatus;
use pgml_proxy::net::messages::parse::Parse;
use pgml_proxy::net::messages::query::Query;
use pgml_proxy::net::messages::ready_for_query::TransactionStatus;
use pgml_proxy::net::messages::startup::StartupPacket;
use pgml_proxy::net::messages::{
    authentication, client_tag, data_row, parameter_description, server_tag,
};
use pgml_proxy::session::budget::ClientBudget;
use pgml_proxy::session::io::relay_core::{CoreHandle, CoreStop};
use pgml_proxy::session::io::SessionIo;
use pgml_proxy::session::relay::{relay, relay_with_core};
use pgml_proxy::{Passthrough, SessionState};
use proptest::prelude::*;

#[path = "protocol_fuzz/backend.rs"]
mod backend;
use backend::Outcome;

/// Every decoder the proxy has, on one frame; errors are fine, panics are not.
fn decode_everything(frame: &Frame) {
    let _ = ClientMessage::decode(frame);
    let _ = Bind::decode(frame);
    let _ = Parse::decode(frame);
    let _ = Close::decode(frame);
    let _ = Describe::decode(frame);
    let _ = Query::decode(frame);
    let _ = data_row::decode(frame);
    let _ = parameter_description::decode(frame);
    let _ = ParameterStatus::decode(frame);
    let _ = TransactionStatus::decode(frame);
    let fields = Fields::decode(frame);
    let _ = fields.to_upstream_error();
    let _ = authentication::code(frame);
    let _ = authentication::offers_channel_binding(frame);
    let _ = authentication::gs2_flag(frame);
    let _ = authentication::without_channel_binding(frame.clone());
    let _ = StartupPacket::decode(frame.body());
    let mut state = SessionState::new(1);
    let _ = state.on_server(frame);
}

fn client_tags() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![
        client_tag::BIND,
        client_tag::CLOSE,
        client_tag::COPY_DATA,
        client_tag::COPY_DONE,
        client_tag::COPY_FAIL,
        client_tag::DESCRIBE,
        client_tag::EXECUTE,
        client_tag::FLUSH,
        client_tag::FUNCTION_CALL,
        client_tag::PARSE,
        client_tag::QUERY,
        client_tag::SYNC,
    ])
}

/// Scripts for the reference backend: mostly messages that succeed, with errors, COPY in
/// both directions and COPY messages, Syncs and Flushes anywhere.
fn scripts() -> impl Strategy<Value = Vec<(u8, Outcome)>> {
    let outcome = prop_oneof![
        5 => Just(Outcome::Ok),
        2 => Just(Outcome::Fails),
        1 => Just(Outcome::CopyOut),
        2 => Just(Outcome::CopyIn),
        1 => Just(Outcome::CopyInFails),
    ];
    prop::collection::vec(
        (prop::sample::select(b"PBDECHSQFdcf".to_vec()), outcome),
        0..24,
    )
}

/// Bodies that are often almost right: C strings, counts and lengths mixed with noise.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        Just(b"\0".to_vec()),
        Just(b"S\0".to_vec()),
        Just(b"select pgml.embed('m', $1)\0".to_vec()),
        any::<u16>().prop_map(|n| n.to_be_bytes().to_vec()),
        any::<i32>().prop_map(|n| n.to_be_bytes().to_vec()),
        Just((-1i32).to_be_bytes().to_vec()),
        Just(0xffffu16.to_be_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn decoders_never_panic(tag in any::<u8>(), body in bodies()) {
        decode_everything(&Frame::new(tag, &body));
    }

    #[test]
    fn framing_never_panics_and_cuts_only_whole_messages(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for direction in [Direction::FromClient, Direction::FromUpstream] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = take_frame(&mut buf, direction) {
                prop_assert!(frame.as_bytes().len() >= 5);
                decode_everything(&frame);
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = take_startup_packet(&mut buf);
    }

    #[test]
    fn bind_round_trips_with_extra_values(
        portal in "[a-z]{0,4}",
        statement in "[a-z]{0,4}",
        values in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..8)), 0..6),
        extra in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..8)), 0..3),
        result_formats in prop::collection::vec(0i16..2, 0..3),
    ) {
        let original = Bind {
            portal: portal.as_bytes(),
            statement: statement.as_bytes(),
            formats: vec![],
            values: values.iter().map(|v| v.as_deref()).collect(),
            result_formats: result_formats.clone(),
        };
        let extra: Vec<ExtraValue> = extra
            .into_iter()
            .map(|v| ExtraValue { format: 1, value: v.map(Into::into) })
            .collect();
        let frame = original.encode_with(&extra);
        let decoded = Bind::decode(&frame).unwrap();
        prop_assert_eq!(decoded.values.len(), values.len() + extra.len());
        prop_assert_eq!(&decoded.values[..values.len()], &original.values[..]);
        prop_assert_eq!(decoded.result_formats, result_formats);
    }

    #[test]
    fn parse_round_trips_with_many_parameters(n in 0usize..65_536, sql in prop::collection::vec(1u8..=255, 0..32)) {
        let types = vec![25u32; n];
        let parse = Parse { name: b"s", sql: &sql, param_types: types };
        let frame = parse.encode();
        let decoded = Parse::decode(&frame).unwrap();
        prop_assert_eq!(decoded.param_types.len(), n);
        prop_assert_eq!(decoded.sql, &sql[..]);
    }

    #[test]
    fn the_session_state_follows_any_server_stream(frames in prop::collection::vec((prop::sample::select(vec![
            server_tag::READY_FOR_QUERY, server_tag::PARAMETER_STATUS, server_tag::ERROR_RESPONSE,
            server_tag::DATA_ROW, server_tag::NOTICE_RESPONSE]), bodies()), 0..20)) {
        let mut state = SessionState::new(1);
        for (tag, body) in &frames {
            let _ = state.on_server(&Frame::new(*tag, body));
            // Never owes a negative number of ReadyForQuery messages.
            prop_assert_eq!(state.pending_ready(), 0);
        }
    }

    #[test]
    fn the_session_state_follows_postgres_protocol_loop(
        script in scripts(),
        // 0: the next client message is relayed; 1: the next response arrives; 2: a notice.
        schedule in prop::collection::vec(0u8..3, 0..96),
    ) {
        let run = backend::run(&script);
        // A COPY that fails on its own: until its error arrives, the proxy takes the COPY as
        // waiting for the client (its Query owes nothing yet).
        let copy_fails = script.iter().any(|&(tag, outcome)| {
            outcome == Outcome::CopyInFails || (tag == b'd' && outcome == Outcome::Fails)
        });
        let mut state = SessionState::new(1);
        let (mut relayed, mut delivered) = (0, 0);
        let finish = std::iter::repeat_n(0, script.len()).chain(std::iter::repeat_n(1, run.responses.len()));
        for step in schedule.into_iter().chain(finish) {
            match step {
                0 if relayed < script.len() => {
                    state.on_relayed(script[relayed].0);
                    relayed += 1;
                }
                1 if run.responses.get(delivered).is_some_and(|(at, _)| *at <= relayed) => {
                    let tag = run.responses[delivered].1;
                    let body: &[u8] = if tag == server_tag::READY_FOR_QUERY { b"I" } else { b"" };
                    state.on_server(&Frame::new(tag, body)).unwrap();
                    delivered += 1;
                }
                2 => state.on_server(&Frame::new(server_tag::NOTICE_RESPONSE, b"")).unwrap(),
                _ => continue,
            }
            if run.closed_at.is_some_and(|at| relayed >= at) {
                // Postgres ended the session: nothing is owed any more.
                break;
            }
            let outstanding = &run.responses[delivered..];
            let settled = outstanding.iter().all(|(at, _)| *at > relayed);
            let owed = outstanding.iter().filter(|(at, tag)| *at <= relayed && *tag == b'Z').count();
            let pending = state.pending_ready();
            let at = format!("after {relayed} relayed and {delivered} answers: {:?}", &run.responses[..delivered]);
            // Waiting for the ReadyForQuery messages owed never waits for one that will not come.
            if settled {
                prop_assert_eq!(pending, 0, "{}", at);
            }
            // The proxy's own queries never start while the upstream is busy with the client's.
            if state.upstream_idle() {
                prop_assert!(settled && run.idle[relayed], "idle too early {}", at);
            }
            if state.in_step() {
                if !copy_fails {
                    prop_assert!(pending >= owed, "{} owed, {} pending {}", owed, pending, at);
                }
                if settled {
                    prop_assert_eq!(state.upstream_idle(), run.idle[relayed], "{}", at);
                    prop_assert_eq!(state.upstream_skipping(), run.skipping[relayed], "{}", at);
                }
            }
        }
    }

    #[test]
    fn the_relay_forwards_any_client_sequence_exactly_or_refuses_it(
        messages in prop::collection::vec((client_tags(), bodies()), 0..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sent: Vec<u8> = messages
            .iter()
            .flat_map(|(tag, body)| Frame::new(*tag, body).as_bytes().to_vec())
            .collect();
        // On the task, then lent to the relay core whenever it can be: the same bytes.
        for core in [None, Some(core())] {
            let relayed = runtime.block_on(relay_both_ways(Vec::new(), sent.clone(), Passthrough, core));
            prop_assert!(
                sent.starts_with(&relayed.to_upstream),
                "forwarded bytes are a prefix of what was sent"
            );
            if relayed.ok {
                prop_assert_eq!(relayed.to_upstream, sent.clone());
            }
        }
    }
}

proptest! {
    /// The lean path, the full one and the relay core are one relay: with a hook that takes
    /// every message as plain, one that takes none (every message by the full path), and one
    /// that takes some (the session switching paths mid-stream), each with and without a relay
    /// core that the session is lent to whenever it can be, the same server and client
    /// messages give the same bytes both ways, the same outcome and the same session state.
    #[test]
    fn the_lean_and_the_full_path_relay_and_record_alike(
        server in prop::collection::vec((server_tags(), bodies()), 0..10),
        client in prop::collection::vec((client_tags(), bodies()), 0..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let encode = |messages: &[(u8, Vec<u8>)]| -> Vec<u8> {
            messages
                .iter()
                .flat_map(|(tag, body)| Frame::new(*tag, body).as_bytes().to_vec())
                .collect()
        };
        let (server, client) = (encode(&server), encode(&client));
        let run = |hook, core| runtime.block_on(relay_both_ways(server.clone(), client.clone(), hook, core));
        let full = run(Taking::None, None);
        prop_assert_eq!(&run(Taking::All, None), &full);
        prop_assert_eq!(&run(Taking::Some, None), &full);
        // Lent to the relay core whenever the lean path has relayed a message, and given back
        // at whatever it does not take: the same bytes, outcome and state.
        prop_assert_eq!(&run(Taking::All, Some(core())), &full);
        prop_assert_eq!(&run(Taking::Some, Some(core())), &full);
    }
}

/// The relay core the properties lend sessions to: one for the whole test binary, lending
/// whenever the lean path has relayed a message.
fn core() -> &'static CoreHandle {
    static CORE: std::sync::OnceLock<(CoreHandle, CoreStop)> = std::sync::OnceLock::new();
    &CORE
        .get_or_init(|| CoreHandle::start("pgml-core-fuzz".into(), None, 0).expect("a relay core"))
        .0
}

/// Which messages `Taking` takes as plain (see `SessionHook::client_plain`).
#[derive(Clone, Copy)]
enum Taking {
    All,
    None,
    /// Those whose body length is even: the session switches between the paths.
    Some,
}

impl pgml_proxy::session::hook::SessionHook for Taking {
    fn client_plain(&self, _tag: u8, body: &[u8], _state: &SessionState) -> bool {
        match self {
            Taking::All => true,
            Taking::None => false,
            Taking::Some => body.len().is_multiple_of(2),
        }
    }

    fn server_plain(&self, _tag: u8, body: &[u8]) -> bool {
        match self {
            Taking::All => true,
            Taking::None => false,
            Taking::Some => body.len().is_multiple_of(2),
        }
    }
}

fn server_tags() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![
        b'2', // BindComplete
        server_tag::CLOSE_COMPLETE,
        server_tag::COMMAND_COMPLETE,
        server_tag::DATA_ROW,
        server_tag::ERROR_RESPONSE,
        server_tag::NOTICE_RESPONSE,
        server_tag::PARAMETER_STATUS,
        server_tag::PARSE_COMPLETE,
        server_tag::READY_FOR_QUERY,
        server_tag::ROW_DESCRIPTION,
        server_tag::COPY_IN_RESPONSE,
    ])
}

/// What one session did: its outcome, the bytes each side received, and the state after.
#[derive(Debug, PartialEq)]
struct Relayed {
    ok: bool,
    to_upstream: Vec<u8>,
    to_client: Vec<u8>,
    state: (usize, bool, bool, bool, TransactionStatus),
}

/// Runs the relay with `hook` between in-process sockets: the upstream side writes `server`
/// first and the client reads it (up to its length, or the end), so that every server message
/// is relayed before any client message; then the client writes `client` and closes.
async fn relay_both_ways<H: pgml_proxy::session::hook::SessionHook + 'static>(
    server: Vec<u8>,
    client: Vec<u8>,
    mut hook: H,
    core: Option<&CoreHandle>,
) -> Relayed {
    use pgml_proxy::net::stream::PgStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    let (mut client_side, proxy_client_side) = UnixStream::pair().unwrap();
    let (proxy_upstream_side, mut upstream) = UnixStream::pair().unwrap();
    let mut io = SessionIo::new(
        PgStream::Unix(proxy_client_side),
        PgStream::Unix(proxy_upstream_side),
        BytesMut::new(),
        SessionState::new(1),
        ClientBudget::new(1 << 20),
    );
    let expected = server.len();
    let client_task = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while received.len() < expected {
            match client_side.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = client_side.write_all(&client).await;
        let _ = client_side.shutdown().await;
        let _ = client_side.read_to_end(&mut received).await;
        received
    });
    let upstream_task = tokio::spawn(async move {
        let _ = upstream.write_all(&server).await;
        let mut received = Vec::new();
        let _ = upstream.read_to_end(&mut received).await;
        received
    });
    let span = tracing::Span::none();
    let relayed = async {
        match core {
            Some(core) => relay_with_core(&mut io, hook, &span, core).await,
            None => relay(&mut io, &mut hook, &span).await,
        }
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), relayed)
        .await
        .expect("the relay ends once the client has closed");
    let state = io.state();
    let state = (
        state.pending_ready(),
        state.upstream_idle(),
        state.upstream_skipping(),
        state.in_step(),
        state.transaction_status(),
    );
    drop(io);
    Relayed {
        ok: outcome.is_ok(),
        to_upstream: upstream_task.await.unwrap(),
        to_client: client_task.await.unwrap(),
        state,
    }
}

/// Inputs that once broke the proxy, kept as regressions.
#[test]
fn a_parse_with_more_than_32767_parameters_is_not_a_negative_count() {
    let parse = Parse {
        name: b"",
        sql: b"insert into t values ($1)",
        param_types: vec![23; 40_000],
    };
    assert_eq!(
        Parse::decode(&parse.encode()).unwrap().param_types.len(),
        40_000
    );
}

#[test]
fn a_latin1_query_is_a_query_not_a_protocol_violation() {
    let frame = Query::encode(b"select 'caf\xe9'");
    assert!(matches!(
        ClientMessage::decode(&frame).unwrap(),
        ClientMessage::Query(_)
    ));
}
