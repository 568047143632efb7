//! The service connections: at most one per database Postgres actually connected to (what
//! `current_database()` says, not the name a client sent: Postgres truncates names at 63 bytes,
//! and a pooler may map several names to one database), at most `max` in all, counting those
//! being opened and the short-lived ones of installs. One idle for `idle_expiry` is closed.
//! Requests for a name with no connection yet wait for the one connect already under way for
//! it (32 sessions' first upcalls at once open one connection, not 32 against the bound).
//! A failed connect is not remembered: the next request tries again.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// Names as sent that are remembered per pool (beyond them, only databases' own names are).
const ALIASES_MAX: usize = 256;

/// Why no service connection was handed out.
#[derive(Debug)]
pub enum PoolError {
    /// `max` service connections are open (or opening); none of them is idle past expiry.
    Full {
        /// The bound.
        max: usize,
    },
    /// Connecting (or reading `current_database()`) failed.
    Open(String),
}

/// The bounded set of service connections, shared by all sessions.
pub struct ServiceConnections {
    max: usize,
    idle_expiry: Duration,
    state: Arc<Mutex<State>>,
    /// One gate per name being connected to: its holder connects, the others wait for it.
    /// An entry lives only while someone holds or waits for it.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct State {
    /// `current_database()` by the name a client sent (names of open databases only).
    aliases: HashMap<String, String>,
    /// The shared connections, by `current_database()`.
    open: HashMap<String, Entry>,
    /// Connections being opened, and short-lived ones in use.
    reserved: usize,
    /// The task that closes idle connections is running.
    sweeping: bool,
}

struct Entry {
    client: Arc<Client>,
    /// When the last lease of it ended (or it was opened).
    idle_since: Arc<Mutex<Instant>>,
}

impl State {
    fn count(&self) -> usize {
        self.open.len() + self.reserved
    }

    /// Drops closed connections and those idle past `expiry` (none that is leased).
    fn expire(&mut self, expiry: Duration) {
        let before = self.open.len();
        self.open.retain(|database, entry| {
            let leased = Arc::strong_count(&entry.client) > 1;
            let idle = lock(&entry.idle_since).elapsed() >= expiry;
            let keep = !entry.client.is_closed() && (leased || !idle);
            if !keep {
                tracing::debug!(%database, "service connection closed (idle or broken)");
            }
            keep
        });
        if self.open.len() != before {
            let open = &self.open;
            self.aliases
                .retain(|_, database| open.contains_key(database));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shared service connection, in use until dropped (it is not closed as idle meanwhile).
pub struct Lease {
    client: Arc<Client>,
    idle_since: Arc<Mutex<Instant>>,
}

impl Deref for Lease {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *lock(&self.idle_since) = Instant::now();
    }
}

/// A place counted against the bound, freed when dropped.
struct Slot {
    state: Option<Arc<Mutex<State>>>,
}

impl Slot {
    /// Frees the place inside a critical section already held.
    fn release(mut self, state: &mut State) {
        state.reserved -= 1;
        self.state = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            lock(&state).reserved -= 1;
        }
    }
}

/// A connection of its own (an install's transaction), counted against the bound until dropped.
pub struct Counted {
    client: Client,
    _slot: Slot,
}

impl Deref for Counted {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl ServiceConnections {
    /// At most `max` connections (at least 1); idle ones closed after `idle_expiry`.
    pub fn new(max: usize, idle_expiry: Duration) -> Self {
        Self {
            max: max.max(1),
            idle_expiry,
            state: Arc::default(),
            connecting: Mutex::default(),
        }
    }

    /// Takes a place against the bound (expired connections are closed first).
    fn reserve(&self) -> Result<Slot, PoolError> {
        let mut state = lock(&self.state);
        state.expire(self.idle_expiry);
        if state.count() >= self.max {
            return Err(PoolError::Full { max: self.max });
        }
        state.reserved += 1;
        Ok(Slot {
            state: Some(self.state.clone()),
        })
    }

    /// The shared connection to the database `name` leads to; `open` connects when none is
    /// known for that name. A new connection whose `current_database()` is already open is
    /// closed and the open one shared.
    pub async fn shared<F, Fut>(&self, name: &str, open: F) -> Result<Lease, PoolError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Client, String>>,
    {
        if let Some(known) = self.known(name) {
            return Ok(known);
        }
        let gate = Arc::clone(lock(&self.connecting).entry(name.to_owned()).or_default());
        let opened = {
            let _turn = gate.lock().await;
            // The connect this one waited for may have made it.
            match self.known(name) {
                Some(known) => Ok(known),
                None => self.open_shared(name, open).await,
            }
        };
        let mut connecting = lock(&self.connecting);
        // Ours and the map's: nobody else waits, the entry goes.
        if Arc::strong_count(&gate) <= 2 {
            connecting.remove(name);
        }
        opened
    }

    /// The open connection `name` is known to lead to.
    fn known(&self, name: &str) -> Option<Lease> {
        let mut state = lock(&self.state);
        state.expire(self.idle_expiry);
        let database = state.aliases.get(name)?;
        state.open.get(database).map(lease)
    }

    /// Connects for `name` (see `shared`).
    async fn open_shared<F, Fut>(&self, name: &str, open: F) -> Result<Lease, PoolError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Client, String>>,
    {
        let slot = self.reserve()?;
        let client = open().await.map_err(PoolError::Open)?;
        let database: String = client
            .query_typed_one("SELECT pg_catalog.current_database()::pg_catalog.text", &[])
            .await
            .map_err(|e| PoolError::Open(format!("reading current_database(): {e}")))?
            .get(0);
        let mut state = lock(&self.state);
        slot.release(&mut state);
        if state.aliases.len() >= ALIASES_MAX {
            state.aliases.retain(|alias, database| alias == database);
        }
        state.aliases.insert(name.to_owned(), database.clone());
        if let Some(entry) = state.open.get(&database).filter(|e| !e.client.is_closed()) {
            // The new connection is dropped (closed) here.
            return Ok(lease(entry));
        }
        let entry = Entry {
            client: Arc::new(client),
            idle_since: Arc::new(Mutex::new(Instant::now())),
        };
        let leased = lease(&entry);
        state.open.insert(database, entry);
        if !state.sweeping {
            state.sweeping = true;
            tokio::spawn(sweep(
                Arc::downgrade(&self.state),
                self.idle_expiry,
                (self.idle_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            ));
        }
        Ok(leased)
    }

    /// A connection of its own, counted against the bound while it lives.
    pub async fn own<F, Fut>(&self, open: F) -> Result<Counted, PoolError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Client, String>>,
    {
        let slot = self.reserve()?;
        let client = open().await.map_err(PoolError::Open)?;
        Ok(Counted {
            client,
            _slot: slot,
        })
    }
}

fn lease(entry: &Entry) -> Lease {
    Lease {
        client: entry.client.clone(),
        idle_since: entry.idle_since.clone(),
    }
}

/// Closes idle connections every `period` until the pool is gone.
async fn sweep(state: Weak<Mutex<State>>, expiry: Duration, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        lock(&state).expire(expiry);
    }
}
