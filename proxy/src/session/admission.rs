//! Admission of connections not yet authenticated: how many may be open at once in all and
//! from one source, so that idle sockets or CancelRequests from one address can neither run the
//! proxy out of file descriptors nor lock other clients out. The deadlines such a connection
//! gets are `connection`'s; authenticated sessions count against `max_connections` instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How many connections may be open before they have authenticated (from accept to the first
/// ReadyForQuery, or to the end of a CancelRequest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// In all. Postgres has no such limit (its backends wait on `authentication_timeout`),
    /// but its processes are cheap to refuse; here it keeps a flood below the descriptor limit.
    pub total: usize,
    /// From one source: an IPv4 address, or an IPv6 /64 (what one host or one customer of a
    /// provider commonly holds), so one source cannot take all of `total`.
    pub per_source: usize,
}

impl Default for PreAuthLimits {
    fn default() -> Self {
        PreAuthLimits {
            total: 256,
            per_source: 64,
        }
    }
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source already has `per_source` connections not yet authenticated.
    PerSource,
    /// `total` connections are not yet authenticated.
    Total,
}

/// What a connection counts under: the address, an IPv6 one by its /64.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: still one address.
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// The counts of connections not yet authenticated, shared by the accept loop (which admits)
/// and the sessions (which leave, on any thread).
#[derive(Clone)]
pub struct Admission {
    limits: PreAuthLimits,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// No connection admitted yet.
    pub fn new(limits: PreAuthLimits) -> Self {
        Admission {
            limits,
            counts: Arc::default(),
        }
    }

    /// Counts a new connection from `peer` until the returned guard is dropped, or says which
    /// limit it is over.
    pub fn admit(&self, peer: IpAddr) -> Result<PreAuth, Refused> {
        let source = Source::of(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.per_source {
            return Err(Refused::PerSource);
        }
        if counts.total >= self.limits.total {
            return Err(Refused::Total);
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_default() += 1;
        Ok(PreAuth {
            counts: self.counts.clone(),
            source,
        })
    }

    /// Connections not yet authenticated now.
    pub fn pending(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One admitted connection, counted until it authenticates (or ends): dropping it gives its
/// place back.
pub struct PreAuth {
    counts: Arc<Mutex<Counts>>,
    source: Source,
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        // Sources at zero are forgotten: the table holds at most `total` entries.
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_held_to_its_share_while_others_are_admitted() {
        let admission = Admission::new(PreAuthLimits {
            total: 5,
            per_source: 2,
        });
        let a1 = admission.admit(ip("10.0.0.1")).unwrap();
        let _a2 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refused::PerSource)
        );
        let _b1 = admission.admit(ip("10.0.0.2")).unwrap();
        let _b2 = admission.admit(ip("10.0.0.2")).unwrap();
        let _c1 = admission.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(admission.pending(), 5);
        assert_eq!(admission.admit(ip("10.0.0.4")).err(), Some(Refused::Total));
        // A connection that authenticates or ends makes room for its source again.
        drop(a1);
        assert_eq!(admission.pending(), 4);
        let _a3 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refused::PerSource)
        );
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_address_is_its_ipv4_address() {
        let admission = Admission::new(PreAuthLimits {
            total: 100,
            per_source: 1,
        });
        let _v6 = admission.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refused::PerSource),
            "another address in the same /64"
        );
        let _other = admission.admit(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = admission.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            admission.admit(ip("::ffff:192.0.2.7")).err(),
            Some(Refused::PerSource)
        );
    }

    #[test]
    fn every_place_is_given_back_and_the_table_forgets_idle_sources() {
        let admission = Admission::new(PreAuthLimits {
            total: 1000,
            per_source: 3,
        });
        let held: Vec<PreAuth> = (0..300u32)
            .filter_map(|i| admission.admit(IpAddr::from((i / 4).to_be_bytes())).ok())
            .collect();
        assert_eq!(held.len(), 75 * 3, "3 of each source's 4");
        drop(held);
        assert_eq!(admission.pending(), 0);
        let counts = admission.counts.lock().unwrap();
        assert!(counts.by_source.is_empty());
    }
}
