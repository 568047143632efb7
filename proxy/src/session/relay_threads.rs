//! The relay threads sessions run on: one current-thread runtime per thread, optionally
//! pinned to a CPU, and where each new connection goes (the thread on the CPU its packets
//! arrive on, within a bound of balance). What a session does is `connection`'s.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::session::admission::PreAuth;
use crate::session::connection::{self, Shared};
use crate::session::cpu_affinity;
use crate::session::hook::Interceptor;
use crate::session::io::relay_core::{CoreHandle, CoreStop, PARK_AFTER};

/// The threads sessions run on. On each, one current-thread runtime owns the session's
/// sockets, its timers and its task: a message's read, handling and write, and the wake-ups in
/// between, stay on one thread (no cross-thread notifications per message, as a work-stealing
/// runtime makes). Dropping it stops the threads' runtimes.
pub(crate) struct RelayThreads {
    threads: Vec<RelayThread>,
    next: usize,
}

/// One relay thread: its runtime, the CPU it is pinned to (if any), and how many sessions
/// it serves now.
struct RelayThread {
    handle: tokio::runtime::Handle,
    cpu: Option<usize>,
    sessions: Arc<AtomicUsize>,
    /// Its relay core, if any (stopped, its sessions given back, when this is dropped).
    core: Option<(CoreHandle, CoreStop)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RelayThreads {
    pub(crate) fn start(n: usize, pinning: bool, cores: bool) -> std::io::Result<Self> {
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
            // The core shares its relay thread's CPU: a session is on one or the other.
            let core = if cores {
                Some(CoreHandle::start(
                    format!("pgml-core-{i}"),
                    cpu,
                    PARK_AFTER,
                )?)
            } else {
                None
            };
            threads.push(RelayThread {
                handle,
                cpu,
                sessions: Arc::new(AtomicUsize::new(0)),
                core,
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
    pub(crate) fn spawn<I: Interceptor>(
        &mut self,
        tcp: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        pre_auth: PreAuth,
        shared: Arc<Shared<I>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let chosen = self.choose(&tcp);
        let thread = &self.threads[chosen];
        let sessions = SessionCount::enter(thread.sessions.clone());
        let core = thread.core.as_ref().map(|(core, _)| core.clone());
        let std_tcp = tcp.into_std();
        let task = thread.handle.spawn(async move {
            let _sessions = sessions;
            // Registered with this thread's runtime, not the acceptor's.
            match std_tcp.and_then(tokio::net::TcpStream::from_std) {
                Ok(tcp) => connection::serve(tcp, peer, pre_auth, shared, core).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
        let mut threads = RelayThreads::start(cpus.len(), true, false).unwrap();
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
}
