//! Tests of `SessionIo`'s memory bounds over real socket pairs: budget taken as a large
//! message arrives, the session's share, and the deadlines (on a paused clock, which moves on
//! whenever every task waits).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use crate::session::budget::GROW_STEP;
use crate::session::hook::{Passthrough, SessionHook};

const MIB: usize = 1024 * 1024;

/// A session over two socket pairs: its I/O, the client's end and the upstream's end.
fn session(budget: &ClientBudget) -> (SessionIo, UnixStream, UnixStream) {
    let (client, client_peer) = UnixStream::pair().unwrap();
    let (upstream, upstream_peer) = UnixStream::pair().unwrap();
    let io = SessionIo::new(
        PgStream::Unix(client),
        PgStream::Unix(upstream),
        BytesMut::new(),
        SessionState::new(1),
        budget.clone(),
    );
    (io, client_peer, upstream_peer)
}

/// The header of a message of `total` bytes (tag included).
fn header(tag: u8, total: usize) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(total as u32 - 1).to_be_bytes());
    out
}

#[tokio::test(start_paused = true)]
async fn a_client_message_holds_only_what_arrived_and_is_cut_at_its_deadline() {
    let budget = ClientBudget::new(4 * MIB);
    let (mut io, mut client, _upstream) = session(&budget);
    let announced = 900 * 1024;
    client.write_all(&header(b'Q', announced)).await.unwrap();
    client.write_all(&vec![b' '; 100 * 1024]).await.unwrap();

    let waiting = tokio::time::timeout(
        PARTIAL_MESSAGE_TIMEOUT - Duration::from_secs(1),
        io.next_event(),
    );
    assert!(waiting.await.is_err(), "the message is incomplete");
    let held = budget.in_use();
    assert!(held > 100 * 1024, "what arrived is held: {held}");
    assert!(
        held <= 100 * 1024 + 5 + GROW_STEP,
        "not the announced size: {held}"
    );

    let err = io.next_event().await.unwrap_err();
    assert!(matches!(err, ProxyError::MessageTimeout { .. }), "{err}");
    assert_eq!(err.sqlstate(), "57014");
    drop(io);
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_large_message_is_handed_out_whole_and_its_budget_comes_back_once_relayed() {
    let budget = ClientBudget::new(4 * MIB);
    let (mut io, mut client, mut upstream) = session(&budget);
    let total = 900 * 1024;
    let mut query = header(b'Q', total);
    query.resize(total - 1, b' ');
    query.push(0);
    let sent = query.clone();
    let writer = tokio::spawn(async move { client.write_all(&query).await.map(|()| client) });

    let Event::Client(frame) = io.next_event().await.unwrap() else {
        panic!("expected the client's message");
    };
    assert_eq!(frame.as_bytes(), &sent[..]);
    assert!(budget.in_use() >= total);
    io.send_upstream(&frame);
    drop(frame);
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        // The stream comes back with the bytes: closing it would end the session.
        upstream.read_exact(&mut got).await.map(|_| (got, upstream))
    });
    let idle = tokio::time::timeout(Duration::from_secs(1), io.next_event());
    let idle = idle.await;
    assert!(idle.is_err(), "nothing else happens: {idle:?}");
    assert_eq!(reader.await.unwrap().unwrap().0, sent);
    assert_eq!(budget.in_use(), 0);
    let _client = writer.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_server_message_over_the_session_share_ends_the_session_from_its_header() {
    let budget = ClientBudget::new(4 * MIB);
    let (mut io, _client, mut upstream) = session(&budget);
    upstream.write_all(&header(b'N', 300 * MIB)).await.unwrap();
    upstream.write_all(b"SNOTICE\0").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), io.next_event())
        .await
        .expect("refused at once, not buffered")
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::MessageTooLarge {
                from: Direction::FromUpstream,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.sqlstate(), "54000");
    assert!(
        err.to_string().contains("server message too large"),
        "{err}"
    );
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_large_server_message_the_client_never_reads_ends_the_session_at_the_deadline() {
    let budget = ClientBudget::new(4 * MIB);
    let (mut io, _client, mut upstream) = session(&budget);
    let total = 900 * 1024;
    let mut notice = header(b'N', total);
    notice.resize(total, b'x');
    let writer = tokio::spawn(async move { upstream.write_all(&notice).await.map(|()| upstream) });
    let Event::Server(frame) = io.next_event().await.unwrap() else {
        panic!("expected the server's message");
    };
    io.send_client(&frame);
    drop(frame);
    let waiting = tokio::time::timeout(
        PARTIAL_MESSAGE_TIMEOUT - Duration::from_secs(1),
        io.next_event(),
    );
    assert!(waiting.await.is_err());
    assert!(budget.in_use() >= total, "the unread copy holds the budget");
    let err = io.next_event().await.unwrap_err();
    assert!(matches!(err, ProxyError::UnreadTimeout { .. }), "{err}");
    drop(io);
    assert_eq!(budget.in_use(), 0);
    let _upstream = writer.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn other_sessions_go_on_while_squatters_announce_the_whole_budget() {
    let budget = ClientBudget::new(4 * MIB);
    let mut squatters = Vec::new();
    for _ in 0..4 {
        let (mut io, mut client, upstream) = session(&budget);
        client.write_all(&header(b'Q', MIB)).await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_secs(1), io.next_event());
        assert!(stalled.await.is_err());
        squatters.push((io, client, upstream));
    }
    // Each holds its header and one step, not the 1 MiB it announced.
    assert!(
        budget.in_use() <= 4 * (GROW_STEP + 5),
        "{}",
        budget.in_use()
    );

    for _ in 0..8 {
        let (mut io, mut client, _up) = session(&budget);
        let total = 100 * 1024;
        let mut query = header(b'Q', total);
        query.resize(total - 1, b' ');
        query.push(0);
        let writer = tokio::spawn(async move { client.write_all(&query).await.map(|()| client) });
        let event = io.next_event().await.unwrap();
        assert!(matches!(event, Event::Client(_)), "{event:?}");
        writer.await.unwrap().unwrap();
    }
}

/// A session relayed (with `Passthrough`) on a task of its own: the task, the client's end
/// and the upstream's end.
fn relayed() -> (tokio::task::JoinHandle<Result<()>>, UnixStream, UnixStream) {
    let (mut io, client, upstream) = session(&ClientBudget::new(4 * MIB));
    let relay = tokio::spawn(async move {
        crate::session::relay::relay(&mut io, &mut Passthrough, &tracing::Span::none()).await
    });
    (relay, client, upstream)
}

/// Writes `bytes` one at a time, letting the relay run between them.
async fn trickle(to: &mut UnixStream, bytes: &[u8]) {
    for byte in bytes {
        to.write_all(std::slice::from_ref(byte)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads exactly `n` bytes, or fails the test after 5 s (a lost wake-up would hang).
async fn read_exactly(from: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), from.read_exact(&mut got))
        .await
        .expect("relayed in time")
        .unwrap();
    got
}

#[tokio::test]
async fn messages_trickled_a_byte_at_a_time_from_either_side_are_relayed_whole() {
    // Each byte wakes the session through its own socket's waker while the other socket's
    // stays registered: neither side may be forgotten.
    let (relay, mut client, mut upstream) = relayed();
    let query = b"Q\0\0\0\x0eselect 1;\0";
    let answer = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
    for _ in 0..3 {
        trickle(&mut client, query).await;
        assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
        trickle(&mut upstream, answer).await;
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
    }
    // Both at once: a query arrives while the answer to the last one is still arriving.
    tokio::join!(trickle(&mut client, query), trickle(&mut upstream, answer));
    assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
    assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(5), relay).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn a_hostile_length_on_the_lean_path_ends_only_that_session_with_08p01() {
    let (relay, mut client, mut upstream) = relayed();
    let query = b"Q\0\0\0\x0eselect 1;\0";
    client.write_all(query).await.unwrap();
    assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
    // A length that does not count itself, then one past any limit.
    for bad in [&b"B\0\0\0\x03"[..], &b"E\xff\xff\xff\xff"[..]] {
        let (relay, mut client, mut upstream) = relayed();
        client.write_all(bad).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("ended in time")
            .unwrap();
        let err = ended.unwrap_err();
        assert_eq!(err.sqlstate(), "08P01", "{err}");
        drop(client);
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing of it went upstream: {rest:?}");
    }
    // The first session was not touched by the others.
    client.write_all(query).await.unwrap();
    assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(5), relay).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

/// A hook that takes every Query as plain but those whose text has `full` in it, and notes
/// for each plain one whether the relay core relayed it (by the thread it ran on).
#[derive(Clone, Default)]
struct OnCore(std::sync::Arc<std::sync::Mutex<Vec<bool>>>);

/// The name of the test core's thread.
const TEST_CORE: &str = "pgml-core-test";

impl OnCore {
    fn relayed(&self) -> Vec<bool> {
        self.0.lock().unwrap().clone()
    }
}

impl SessionHook for OnCore {
    fn client_plain(&self, tag: u8, body: &[u8], _state: &SessionState) -> bool {
        tag != client_tag::QUERY || !body.windows(4).any(|w| w == b"full")
    }

    fn on_plain_client(&mut self, tag: u8, _body: &[u8], _state: &SessionState) {
        if tag == client_tag::QUERY {
            let on_core = std::thread::current().name() == Some(TEST_CORE);
            self.0.lock().unwrap().push(on_core);
        }
    }
}

/// A Query and the upstream's answer to it.
fn query(sql: &str) -> (Vec<u8>, Vec<u8>) {
    let query = crate::net::messages::query::Query::encode(sql.as_bytes());
    let answer = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I".to_vec();
    (query.as_bytes().to_vec(), answer)
}

/// One statement cycle, checked byte for byte both ways.
async fn cycle(client: &mut UnixStream, upstream: &mut UnixStream, sql: &str) {
    let (query, answer) = query(sql);
    client.write_all(&query).await.unwrap();
    assert_eq!(read_exactly(upstream, query.len()).await, query);
    upstream.write_all(&answer).await.unwrap();
    assert_eq!(read_exactly(client, answer.len()).await, answer);
}

/// A session relayed with a relay core (`TEST_CORE`) that lends it after `park_after`
/// cycles: the client's and the upstream's ends, what its hook saw, the relay's task, and the
/// core (stopped when dropped). With `cut`, the task does what `connection` does at the
/// shutdown's cut once it fires: it drops the relay, then sends the FATAL.
struct Lending {
    client: UnixStream,
    upstream: UnixStream,
    seen: OnCore,
    relay: tokio::task::JoinHandle<Result<()>>,
    _core: relay_core::CoreStop,
}

impl Lending {
    /// Runs `n` statement cycles; the last must have been relayed by the core.
    async fn cycles_until_lent(&mut self, n: usize) {
        for _ in 0..n {
            cycle(&mut self.client, &mut self.upstream, "select 1").await;
        }
        let relayed = self.seen.relayed();
        assert_eq!(relayed.last(), Some(&true), "lent: {relayed:?}");
    }
}

fn lending(park_after: u32, cut: Option<tokio::sync::oneshot::Receiver<()>>) -> Lending {
    let (core, stop) = relay_core::CoreHandle::start(TEST_CORE.into(), None, park_after).unwrap();
    let (mut io, client, upstream) = session(&ClientBudget::new(4 * MIB));
    let hook = OnCore::default();
    let seen = hook.clone();
    let relay = tokio::spawn(async move {
        let span = tracing::Span::none();
        let relayed = crate::session::relay::relay_with_core(&mut io, hook, &span, &core);
        let Some(cut) = cut else {
            return relayed.await;
        };
        tokio::select! {
            ended = relayed => panic!("the relay ended by itself: {ended:?}"),
            _ = cut => {}
        }
        io.send_fatal(&ProxyError::Shutdown).await;
        Ok(())
    });
    Lending {
        client,
        upstream,
        seen,
        relay,
        _core: stop,
    }
}

#[tokio::test]
async fn a_lent_session_is_relayed_by_the_core_and_comes_back_for_what_the_hook_wants() {
    let mut lent = lending(3, None);
    for _ in 0..8 {
        cycle(&mut lent.client, &mut lent.upstream, "select 1").await;
    }
    let first = lent.seen.relayed();
    assert_eq!(first.len(), 8);
    assert!(
        first[..3].iter().all(|on_core| !on_core),
        "the first 3 cycles are the task's: {first:?}"
    );
    assert!(
        first[4..].iter().all(|on_core| *on_core),
        "then the core's: {first:?}"
    );
    // Not plain: the core gives the session back, and the full path relays it.
    cycle(&mut lent.client, &mut lent.upstream, "select 'full'").await;
    for _ in 0..8 {
        cycle(&mut lent.client, &mut lent.upstream, "select 2").await;
    }
    // The answer to the full path's statement counts towards the next lending.
    let second = &lent.seen.relayed()[8..];
    assert!(second[..2].iter().all(|on_core| !on_core), "{second:?}");
    assert!(
        second[4..].iter().all(|on_core| *on_core),
        "lent again: {second:?}"
    );
    // The client leaves while lent: the task sees it and ends the session.
    drop(lent.client);
    let ended = tokio::time::timeout(Duration::from_secs(5), lent.relay).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn a_task_dropped_while_its_session_is_lent_gets_it_back_for_the_fatal() {
    let (cut, cut_seen) = tokio::sync::oneshot::channel::<()>();
    let mut lent = lending(1, Some(cut_seen));
    lent.cycles_until_lent(4).await;
    cut.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), lent.relay)
        .await
        .expect("recalled in time")
        .unwrap()
        .unwrap();
    let mut fatal = Vec::new();
    lent.client.read_to_end(&mut fatal).await.unwrap();
    assert_eq!(fatal.first(), Some(&b'E'), "{fatal:?}");
    assert!(fatal.windows(5).any(|w| w == b"57P01"), "{fatal:?}");
}

#[tokio::test]
async fn a_hostile_length_reaching_the_core_ends_the_session_with_08p01() {
    let mut lent = lending(1, None);
    lent.cycles_until_lent(3).await;
    lent.client.write_all(b"B\0\0\0\x03").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), lent.relay)
        .await
        .expect("ended in time")
        .unwrap();
    assert_eq!(ended.unwrap_err().sqlstate(), "08P01");
    drop(lent.client);
    let mut rest = Vec::new();
    lent.upstream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing of it went upstream: {rest:?}");
}

#[tokio::test]
async fn a_client_flooding_a_lent_session_is_held_back_while_the_upstream_does_not_read() {
    let mut lent = lending(1, None);
    lent.cycles_until_lent(2).await;
    // Queries far faster than the upstream reads them (it reads nothing for now).
    let (query, _) = query("select 1");
    let flood = query.repeat(8 * MIB / query.len());
    let sent = flood.clone();
    let mut client = lent.client;
    let writer = tokio::spawn(async move { client.write_all(&flood).await.map(|()| client) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The core stops reading the client at the queue's high-water mark: what it holds is
    // bounded by that and one read, whatever the client sends.
    assert!(
        !writer.is_finished(),
        "the core took in 8 MiB that nothing upstream read"
    );
    // Once the upstream reads, every byte arrives, in order.
    assert!(read_exactly(&mut lent.upstream, sent.len()).await == sent);
    let _client = writer.await.unwrap().unwrap();
    let on_core = lent
        .seen
        .relayed()
        .iter()
        .filter(|on_core| **on_core)
        .count();
    assert!(on_core > 1000, "relayed by the core: {on_core}");
}
