//! Who gets a connection: bounds on connections in total, per source address, and on logins in
//! progress (each holds a buffer and a task for up to the login timeout), so that one client
//! cannot take them all. A connection over a bound is closed at once, before anything is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
}

/// An admitted connection: counted until dropped; logging in until [`Admitted::logged_in`].
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    logging_in: bool,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission { limits, counts: Mutex::default() })
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
}
