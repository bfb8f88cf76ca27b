//! Who gets a connection: bounds on connections in total, per source address, and on logins in
//! progress (each holds a buffer and a task for up to the login timeout), so that one client
//! cannot take them all. A connection over a bound is closed at once, before anything is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub connections: u32,
    pub connections_per_address: u32,
    /// Connections that have not completed their login.
    pub logins_in_progress: u32,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits { connections: 1024, connections_per_address: 64, logins_in_progress: 128 }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyFromAddress,
    TooManyLogins,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::TooManyConnections => "too many connections",
            Refused::TooManyFromAddress => "too many connections from this address",
            Refused::TooManyLogins => "too many logins in progress",
        })
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    logging_in: u32,
    by_address: HashMap<IpAddr, u32>,
}

/// The connections admitted now.
#[derive(Debug, Default)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
    /// When each address's next failed authentication may be answered.
    auth_penalties: Mutex<HashMap<IpAddr, Instant>>,
}

/// How long each failed authentication from an address waits, one after another.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Addresses with a penalty remembered; beyond it the expired ones are forgotten (and if all
/// are current, every one: a flood from many addresses then waits less, never unboundedly).
const PENALTIES_MAX: usize = 4096;

/// An admitted connection: counted until dropped; logging in until [`Admitted::logged_in`].
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    logging_in: bool,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission { limits, counts: Mutex::default(), auth_penalties: Mutex::default() })
    }

    /// How long to wait before answering a failed authentication from `address`: failures
    /// from one address are answered one per [`AUTH_FAILURE_DELAY`], however many connections
    /// it guesses on at once (each waiting connection keeps its admission slot meanwhile).
    pub fn auth_failure_delay(&self, address: IpAddr, now: Instant) -> Duration {
        let mut penalties = self.auth_penalties.lock().expect("poisoned");
        if penalties.len() >= PENALTIES_MAX {
            penalties.retain(|_, until| *until > now);
            if penalties.len() >= PENALTIES_MAX {
                penalties.clear();
            }
        }
        let until = penalties.entry(address).or_insert(now);
        *until = (*until).max(now) + AUTH_FAILURE_DELAY;
        *until - now
    }

    /// Admits a connection from `address`, or says why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refused> {
        let mut c = self.counts.lock().expect("poisoned");
        if c.total >= self.limits.connections {
            return Err(Refused::TooManyConnections);
        }
        if c.logging_in >= self.limits.logins_in_progress {
            return Err(Refused::TooManyLogins);
        }
        let from = c.by_address.entry(address).or_default();
        if *from >= self.limits.connections_per_address {
            return Err(Refused::TooManyFromAddress);
        }
        *from += 1;
        c.total += 1;
        c.logging_in += 1;
        Ok(Admitted { admission: self.clone(), address, logging_in: true })
    }

    /// (connections, logins in progress) now.
    pub fn counts(&self) -> (u32, u32) {
        let c = self.counts.lock().expect("poisoned");
        (c.total, c.logging_in)
    }
}

impl Admitted {
    /// [`Admission::auth_failure_delay`] for this connection's address.
    pub fn auth_failure_delay(&self) -> Duration {
        self.admission.auth_failure_delay(self.address, Instant::now())
    }

    /// The login completed: the connection no longer counts as logging in.
    pub fn logged_in(&mut self) {
        if std::mem::take(&mut self.logging_in) {
            self.admission.counts.lock().expect("poisoned").logging_in -= 1;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.logged_in();
        let mut c = self.admission.counts.lock().expect("poisoned");
        c.total -= 1;
        if let Some(n) = c.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                c.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_holds_and_frees_on_drop() {
        let a = Admission::new(AdmissionLimits { connections: 3, connections_per_address: 2, logins_in_progress: 2 });
        let (one, two): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut first = a.admit(one).unwrap();
        let second = a.admit(one).unwrap();
        assert_eq!(a.admit(two).unwrap_err(), Refused::TooManyLogins);
        first.logged_in();
        assert_eq!(a.admit(one).unwrap_err(), Refused::TooManyFromAddress);
        let third = a.admit(two).unwrap();
        assert_eq!(a.counts(), (3, 2));
        assert_eq!(a.admit(two).unwrap_err(), Refused::TooManyConnections);
        drop((first, second, third));
        assert_eq!(a.counts(), (0, 0));
        assert!(a.counts.lock().unwrap().by_address.is_empty());
    }

    #[test]
    fn failed_authentications_from_one_address_are_answered_one_per_delay() {
        let a = Admission::new(AdmissionLimits::default());
        let (one, two): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        let waits: Vec<u64> = (0..3).map(|_| a.auth_failure_delay(one, now).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 3], "three guesses at once on three connections");
        assert_eq!(a.auth_failure_delay(two, now), AUTH_FAILURE_DELAY, "another address waits its own");
        let later = now + Duration::from_secs(60);
        assert_eq!(a.auth_failure_delay(one, later), AUTH_FAILURE_DELAY, "the penalty ran out");
        for i in 0..PENALTIES_MAX as u32 {
            a.auth_failure_delay(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)), later);
        }
        assert!(a.auth_penalties.lock().unwrap().len() <= PENALTIES_MAX, "remembered addresses are bounded");
    }
}
