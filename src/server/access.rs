//! Who may log in to a target: initiator names, source networks, and the CHAP secrets they
//! must prove. Discovery lists a target only to initiators that may log in to it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::iscsi::chap::ChapSecrets;

/// An address or a CIDR network ("10.0.0.0/8", "fd00::/8", "192.0.2.7").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let bad = || format!("{s:?} is not an address or a network (10.0.0.0/8, fd00::/8)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let mask = |bits: u32, width: u32| if bits == 0 { 0 } else { u128::MAX << (width - bits) };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask(self.prefix as u32, 32) as u32;
                u32::from(net) & m == u32::from(ip) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask(self.prefix as u32, 128);
                u128::from(net) & m == u128::from(ip) & m
            }
            _ => false,
        }
    }
}

/// A target's access rules. The default lets anyone in without authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Initiator names allowed (lowercase: iSCSI names compare case-insensitively); None: any.
    pub initiators: Option<BTreeSet<String>>,
    /// Source networks allowed; None: any.
    pub networks: Option<Vec<Network>>,
    /// CHAP required of every initiator; None: none.
    pub chap: Option<ChapSecrets>,
    /// Initiators that may reset the whole target (TARGET WARM or COLD RESET, which abort or
    /// end every session's commands); None: anyone on a target open to anyone, else nobody.
    pub resetters: Option<BTreeSet<String>>,
}

impl Access {
    /// Whether `initiator` connecting from `peer` may log in.
    pub fn admits(&self, initiator: &str, peer: IpAddr) -> bool {
        let named = self.initiators.as_ref().is_none_or(|names| names.contains(&initiator.to_lowercase()));
        let near = self.networks.as_ref().is_none_or(|nets| nets.iter().any(|n| n.contains(peer)));
        named && near
    }

    /// Whether anyone may log in, unauthenticated.
    pub fn is_open(&self) -> bool {
        self.initiators.is_none() && self.networks.is_none() && self.chap.is_none()
    }

    /// Whether `initiator` may reset the whole target. A reset reaches every other
    /// initiator's sessions, so on a guarded target (or one whose LUNs are masked per
    /// initiator: `shared` false) it is a right of its own, as LIO makes it. On a target open to
    /// anyone it takes nothing away that logging in does not already give.
    pub fn may_reset(&self, initiator: &str, shared: bool) -> bool {
        match &self.resetters {
            Some(names) => names.contains(&initiator.to_lowercase()),
            None => self.is_open() && shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix_and_family() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped");
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let host = Network::parse("192.0.2.7").unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()) && !host.contains("192.0.2.8".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains("203.0.113.1".parse().unwrap()));
        assert!(Network::parse("fd00::/8").unwrap().contains("fdab::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_networks_both_have_to_match() {
        let access = Access {
            initiators: Some(["iqn.2026-12.org.example:host1".to_string()].into()),
            networks: Some(vec![Network::parse("10.0.0.0/8").unwrap()]),
            chap: None,
            resetters: None,
        };
        let ten: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(access.admits("IQN.2026-12.org.example:HOST1", ten), "names compare case-insensitively");
        assert!(!access.admits("iqn.2026-12.org.example:host2", ten));
        assert!(!access.admits("iqn.2026-12.org.example:host1", "192.0.2.1".parse().unwrap()));
        assert!(Access::default().admits("anyone", ten));
    }

    #[test]
    fn resetting_the_target_is_a_right_of_its_own_once_the_target_is_guarded() {
        let open = Access::default();
        assert!(open.may_reset("iqn.any", true), "open to anyone: anyone");
        assert!(!open.may_reset("iqn.any", false), "LUNs masked per initiator: nobody unlisted");
        let guarded = Access { initiators: Some(["iqn.a".to_string(), "iqn.b".to_string()].into()), ..open.clone() };
        assert!(!guarded.may_reset("iqn.a", true), "an ACL: nobody unlisted");
        let listed = Access { resetters: Some(["iqn.a".to_string()].into()), ..guarded };
        assert!(listed.may_reset("IQN.A", true) && !listed.may_reset("iqn.b", true));
    }
}
