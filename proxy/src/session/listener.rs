//! The accept loop: one task per client connection, a connection limit, and graceful shutdown
//! (stop accepting, let sessions finish up to a timeout, then cut the rest).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::Result;
use crate::net::upstream::Upstream;
use crate::session::budget::ClientBudget;
use crate::session::connection::{self, Shared};
use crate::session::cpu_affinity;
use crate::session::hook::Interceptor;

/// How long sessions get to deliver their FATAL once the shutdown timeout has passed.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// How the relay serves clients.
#[derive(Clone)]
pub struct RelayConfig {
    /// The server every session is relayed to.
    pub upstream: Upstream,
    /// TLS for clients that send SSLRequest; `None` answers 'N'.
    pub tls: Option<TlsAcceptor>,
    /// Sessions served at once; more get FATAL 53300.
    pub max_connections: usize,
    /// How long sessions may run on after shutdown begins.
    pub shutdown_timeout: Duration,
    /// Threads that run the sessions, each a single-threaded runtime driving its own sockets;
    /// 0 runs them on the caller's runtime.
    pub relay_threads: usize,
    /// Pin relay thread i to the i-th CPU the process may run on (when there is one thread
    /// per allowed CPU) and give each new connection to the thread on the CPU its packets
    /// arrive on; otherwise sessions are dealt round-robin and the OS places the threads.
    pub relay_pinning: bool,
}

/// The threads sessions run on. On each, one current-thread runtime owns the session's
/// sockets, its timers and its task: a message's read, handling and write, and the wake-ups in
/// between, stay on one thread (no cross-thread notifications per message, as a work-stealing
/// runtime makes). Dropping it stops the threads' runtimes.
struct RelayThreads {
    threads: Vec<RelayThread>,
    next: usize,
}

/// One relay thread: its runtime, the CPU it is pinned to (if any), and how many sessions
/// it serves now.
struct RelayThread {
    handle: tokio::runtime::Handle,
    cpu: Option<usize>,
    sessions: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RelayThreads {
    fn start(n: usize, pinning: bool) -> std::io::Result<Self> {
        let cpus = if pinning {
            cpu_affinity::allowed()
        } else {
            Vec::new()
        };
        // Pinned only with exactly one thread per allowed CPU (the default): fewer would crowd
        // the first CPUs of the mask whatever else runs there, more would share CPUs unevenly.
        let pinned = n == cpus.len();
        if pinning && !pinned {
            tracing::info!(
                relay_threads = n,
                cpus = cpus.len(),
                "relay threads not pinned: not one thread per allowed CPU"
            );
        }
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            // Sessions need sockets and timers only (no signal or child-process driver to
            // service on every park).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let cpu = if pinned { cpus.get(i).copied() } else { None };
            std::thread::Builder::new()
                .name(format!("pgml-relay-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = cpu_affinity::pin_current_thread(cpu) {
                            tracing::warn!(cpu, error = %e, "could not pin a relay thread");
                        }
                    }
                    // Runs the sessions spawned onto it until the sender is dropped.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            threads.push(RelayThread {
                handle,
                cpu,
                sessions: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(RelayThreads { threads, next: 0 })
    }

    /// The thread for a new connection: see `place`; unpinned threads take turns (and no
    /// socket option is read for them).
    fn choose(&mut self, tcp: &tokio::net::TcpStream) -> usize {
        let pinned = self.threads.iter().any(|t| t.cpu.is_some());
        let local = pinned
            .then(|| cpu_affinity::incoming_cpu(tcp))
            .flatten()
            .and_then(|cpu| self.threads.iter().position(|t| t.cpu == Some(cpu)));
        if let Some(local) = local {
            let chosen = place(local, &self.loads());
            tracing::debug!(thread = chosen, local, "session placed");
            return chosen;
        }
        let chosen = self.next % self.threads.len();
        self.next = self.next.wrapping_add(1);
        chosen
    }

    /// How many sessions each thread serves now.
    fn loads(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `serve` on the chosen thread, with `tcp` moved to that thread's runtime; the task
    /// returned ends with it, and aborting it (dropping it) ends the session.
    fn spawn<I: Interceptor>(
        &mut self,
        tcp: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        shared: Arc<Shared<I>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let chosen = self.choose(&tcp);
        let thread = &self.threads[chosen];
        let sessions = SessionCount::enter(thread.sessions.clone());
        let std_tcp = tcp.into_std();
        let task = thread.handle.spawn(async move {
            let _sessions = sessions;
            // Registered with this thread's runtime, not the acceptor's.
            match std_tcp.and_then(tokio::net::TcpStream::from_std) {
                Ok(tcp) => connection::serve(tcp, peer, shared).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not move a connection to its relay thread")
                }
            }
        });
        let task = AbortOnDrop(task);
        async move {
            let mut task = task;
            let _ = (&mut task.0).await;
        }
    }
}

/// Where a new session goes, given the thread on the CPU its packets arrive on (`local`; for
/// a local client, the CPU the client runs on) and how many sessions each thread serves: the
/// local thread, unless it already serves more than its share (then the least busy thread).
fn place(local: usize, loads: &[usize]) -> usize {
    let total: usize = loads.iter().sum();
    let least = loads.iter().copied().min().unwrap_or(0);
    if loads[local] <= least + 1 + total / (2 * loads.len()) {
        local
    } else {
        loads.iter().position(|&l| l == least).unwrap_or(local)
    }
}

/// Counts a session on its relay thread for as long as it lives.
struct SessionCount(Arc<AtomicUsize>);

impl SessionCount {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        SessionCount(count)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts the task when dropped (the session is cut when its accept-loop entry is).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What an unauthenticated or misbehaving client may cost the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// From accept to the first ReadyForQuery (Postgres' authentication_timeout, 60 s by
    /// default): the startup packet, TLS handshake and the whole authentication exchange.
    pub authentication_timeout: Duration,
    /// Bytes that client messages buffered whole may take in all sessions together.
    pub client_buffer_budget: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            authentication_timeout: Duration::from_secs(60),
            client_buffer_budget: 256 * 1024 * 1024,
        }
    }
}

/// Accepts clients on `listener` until `shutdown` completes, then drains the sessions; with
/// the default `SessionLimits`.
pub async fn run<I: Interceptor>(
    listener: TcpListener,
    config: RelayConfig,
    interceptor: I,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_with_limits(
        listener,
        config,
        SessionLimits::default(),
        interceptor,
        shutdown,
    )
    .await
}

/// Accepts clients on `listener` until `shutdown` completes, then drains the sessions.
pub async fn run_with_limits<I: Interceptor>(
    listener: TcpListener,
    config: RelayConfig,
    limits: SessionLimits,
    interceptor: I,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        upstream: config.upstream,
        tls: config.tls,
        authentication_timeout: limits.authentication_timeout,
        budget: ClientBudget::new(limits.client_buffer_budget),
        limit: Arc::new(Semaphore::new(config.max_connections)),
        interceptor,
        next_id: AtomicU64::new(1),
        cut: cut_rx,
    });
    let mut threads = match config.relay_threads {
        0 => None,
        n => Some(RelayThreads::start(n, config.relay_pinning)?),
    };
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    match threads.as_mut() {
                        Some(threads) => sessions.spawn(threads.spawn(tcp, peer, shared.clone())),
                        None => sessions.spawn(connection::serve(tcp, peer, shared.clone())),
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        sessions = sessions.len(),
        "shutting down: no longer accepting"
    );
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown timeout reached: terminating remaining sessions"
        );
        // Each session sends its client a FATAL 57P01 and closes (a transaction still open
        // upstream is rolled back when its connection goes); any that cannot are cut.
        let _ = cut.send(true);
        let ended = tokio::time::timeout(CUT_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            sessions.shutdown().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::messages::startup::StartupMessage;
    use crate::session::hook::Passthrough;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the proxy closes; what it sent.
    async fn until_closed(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer));
        read.await.expect("closed by the proxy").expect("read");
        answer
    }

    /// The relay (Passthrough) in front of 127.0.0.1:`upstream_port` with `limits`: its
    /// address, the stop signal and its task.
    async fn start_relay(
        upstream_port: u16,
        limits: SessionLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = RelayConfig {
            upstream: Upstream::new("127.0.0.1", upstream_port, Default::default()).unwrap(),
            tls: None,
            max_connections: 10,
            shutdown_timeout: Duration::from_secs(1),
            relay_threads: 2,
            relay_pinning: true,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy = tokio::spawn(run_with_limits(
            listener,
            config,
            limits,
            Passthrough,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, stop, proxy)
    }

    #[test]
    fn sessions_go_to_the_thread_on_their_cpu_while_the_threads_stay_near_balance() {
        // Clients spread over the CPUs stay local.
        assert_eq!(place(1, &[3, 3]), 1);
        assert_eq!(
            place(0, &[4, 0]),
            1,
            "4 > 0 + 1 + 4/4: the idle thread takes it"
        );
        // All clients on one CPU: local while within a session or so of the others, then
        // they spread (8 sessions end 5/3, not 8/0).
        let mut loads = [0, 0];
        for _ in 0..8 {
            let i = place(0, &loads);
            loads[i] += 1;
        }
        assert_eq!(loads, [5, 3]);
        let mut loads = [0, 0, 0, 0];
        for _ in 0..16 {
            let i = place(2, &loads);
            loads[i] += 1;
        }
        assert!(loads.iter().all(|&l| l >= 3), "{loads:?}");
    }

    proptest::proptest! {
        /// Whatever the loads and whichever CPU a client's packets arrive on (an attacker can
        /// aim them at one NIC queue), placement names an existing thread, picks the local one
        /// only within its share, and otherwise a least busy one; and a stream of connections
        /// all arriving on one CPU never opens a gap wider than the bound allows.
        #[test]
        fn placement_stays_in_range_and_within_the_bound(
            loads in proptest::collection::vec(0usize..10_000, 1..16),
            local in 0usize..16,
            arrivals in 0usize..200,
        ) {
            let local = local % loads.len();
            let chosen = place(local, &loads);
            proptest::prop_assert!(chosen < loads.len());
            let least = *loads.iter().min().unwrap();
            let total: usize = loads.iter().sum();
            if chosen == local {
                proptest::prop_assert!(loads[local] <= least + 1 + total / (2 * loads.len()));
            } else {
                proptest::prop_assert_eq!(loads[chosen], least);
            }
            let mut grown = vec![0; loads.len()];
            for _ in 0..arrivals {
                let i = place(local, &grown);
                grown[i] += 1;
            }
            let (least, most) = (*grown.iter().min().unwrap(), *grown.iter().max().unwrap());
            proptest::prop_assert!(most <= least + 2 + arrivals / (2 * grown.len()), "{:?}", grown);
        }
    }

    #[tokio::test]
    async fn connections_all_arriving_on_one_cpu_spread_over_the_relay_threads() {
        // A client (or an attacker picking source ports for one NIC queue) whose packets all
        // arrive on one CPU cannot pile its sessions onto that CPU's relay thread.
        let cpus = cpu_affinity::allowed();
        let mut threads = RelayThreads::start(cpus.len(), true).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let n = 4 * cpus.len();
        let first = cpus[0];
        let clients = std::thread::spawn(move || {
            cpu_affinity::pin_current_thread(first).unwrap();
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        let mut sessions = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let chosen = threads.choose(&tcp);
            sessions.push(SessionCount::enter(
                threads.threads[chosen].sessions.clone(),
            ));
        }
        let loads = threads.loads();
        assert_eq!(loads.iter().sum::<usize>(), n);
        let least = loads.iter().copied().min().unwrap();
        let most = loads.iter().copied().max().unwrap();
        assert!(most <= least + 2 + n / (2 * loads.len()), "{loads:?}");
        // Sessions that end give their places back.
        drop(sessions);
        assert!(threads.loads().iter().all(|&l| l == 0));
        drop(clients);
    }

    #[tokio::test]
    async fn clients_stalling_before_or_during_authentication_are_closed_at_the_deadline() {
        // An upstream that accepts and never answers: authentication cannot finish.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                open.push(tcp);
            }
        });
        let limits = SessionLimits {
            authentication_timeout: Duration::from_millis(300),
            ..SessionLimits::default()
        };
        let (addr, stop, proxy) = start_relay(upstream_port, limits).await;

        let started = std::time::Instant::now();
        let mut nothing = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let startup = StartupMessage {
            version: 196_608,
            params: vec![("user".into(), "u".into())],
        };
        stalled.write_all(&startup.encode()).await.unwrap();
        assert!(until_closed(&mut nothing).await.is_empty());
        let answer = until_closed(&mut stalled).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("C08P01"), "{text}");
        assert!(
            text.contains("canceling authentication due to timeout"),
            "{text}"
        );

        let _ = stop.send(());
        proxy.await.unwrap().unwrap();
        held.abort();
    }

    /// An upstream that lets every client in (AuthenticationOk, ReadyForQuery) and then only
    /// reads.
    async fn welcoming_upstream() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut len = [0u8; 4];
                    tcp.read_exact(&mut len).await?;
                    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    tcp.read_exact(&mut startup).await?;
                    tcp.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").await?;
                    let mut sink = Vec::new();
                    tcp.read_to_end(&mut sink).await
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_message_beyond_the_client_buffer_budget_ends_its_session_with_53200() {
        let limits = SessionLimits {
            client_buffer_budget: 1024 * 1024,
            ..SessionLimits::default()
        };
        let (addr, stop, proxy) = start_relay(welcoming_upstream().await, limits).await;
        let login = || async {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let startup = StartupMessage {
                version: 196_608,
                params: vec![("user".into(), "u".into())],
            };
            conn.write_all(&startup.encode()).await.unwrap();
            let mut welcome = [0u8; 15];
            conn.read_exact(&mut welcome).await.unwrap();
            conn
        };
        let mut greedy = login().await;
        let mut query = vec![b'Q'];
        query.extend_from_slice(&(2u32 * 1024 * 1024).to_be_bytes());
        query.extend_from_slice(&[b' '; 1024]);
        greedy.write_all(&query).await.unwrap();
        let text = String::from_utf8_lossy(&until_closed(&mut greedy).await).into_owned();
        assert!(text.contains("C53200"), "{text}");
        assert!(text.contains("Mout of memory"), "{text}");
        assert!(text.contains("--client-buffer-budget-mb"), "{text}");

        // A message that fits goes through, and its bytes are given back afterwards.
        let mut modest = login().await;
        let mut query = vec![b'Q'];
        let sql = vec![b' '; 512 * 1024];
        query.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
        query.extend_from_slice(&sql);
        query.push(0);
        for _ in 0..3 {
            modest.write_all(&query).await.unwrap();
        }
        modest.write_all(b"X\0\0\0\x04").await.unwrap();
        assert!(until_closed(&mut modest).await.is_empty());

        let _ = stop.send(());
        proxy.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_tls_clients_scram_answer_to_a_server_offering_binding_gets_a_fatal_that_says_why() {
        // An upstream reached over TLS offers SCRAM-SHA-256-PLUS; it never gets to answer.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut len = [0u8; 4];
                    tcp.read_exact(&mut len).await?;
                    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    tcp.read_exact(&mut startup).await?;
                    let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
                    let mut sasl = vec![b'R'];
                    sasl.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                    sasl.extend_from_slice(body);
                    tcp.write_all(&sasl).await?;
                    let mut sink = Vec::new();
                    tcp.read_to_end(&mut sink).await
                });
            }
        });
        let (addr, stop, proxy) = start_relay(upstream_port, SessionLimits::default()).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let startup = StartupMessage {
            version: 196_608,
            params: vec![("user".into(), "u".into())],
        };
        conn.write_all(&startup.encode()).await.unwrap();
        let offered = b"\0\0\0\x0aSCRAM-SHA-256\0\0";
        let mut sasl = vec![0u8; 5 + offered.len()];
        conn.read_exact(&mut sasl).await.unwrap();
        assert_eq!(
            &sasl[5..],
            offered,
            "the client is offered SCRAM-SHA-256 only"
        );
        let first = b"y,,n=,r=nonce";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        let mut initial = vec![b'p'];
        initial.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        initial.extend_from_slice(&body);
        conn.write_all(&initial).await.unwrap();
        let text = String::from_utf8_lossy(&until_closed(&mut conn).await).into_owned();
        assert!(text.contains("C08P01"), "{text}");
        assert!(text.contains("channel binding cannot pass"), "{text}");
        assert!(text.contains("channel_binding=disable"), "{text}");

        let _ = stop.send(());
        proxy.await.unwrap().unwrap();
    }
}
