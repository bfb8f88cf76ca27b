//! Login and text negotiation of RFC 7143 §13 keys, with the RFC's result functions.
//!
//! The target is always the responder here: [`Negotiator::respond`] takes the initiator's
//! offers and produces our answers, updating the negotiated [`Params`].

use std::collections::BTreeSet;

/// Our side of the negotiation: what this target offers and accepts (configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// The largest data segment we accept; declared to the initiator.
    pub max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub max_outstanding_r2t: u16,
    /// Whether we accept unsolicited data at all (ImmediateData, InitialR2T=No).
    pub unsolicited_data: bool,
    pub header_digest_allowed: bool,
    pub data_digest_allowed: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_len: 256 * 1024,
            max_burst_len: 1024 * 1024,
            first_burst_len: 256 * 1024,
            max_outstanding_r2t: 8,
            unsolicited_data: true,
            header_digest_allowed: true,
            data_digest_allowed: true,
            default_time2wait: 2,
            default_time2retain: 0,
        }
    }
}

/// The highest iSCSIProtocolLevel we speak: RFC 7144's.
pub const PROTOCOL_LEVEL: u8 = 2;

/// The limits of RFC 7143 for data segment and burst lengths.
pub const SEGMENT_LEN_MIN: u32 = 512;
pub const SEGMENT_LEN_MAX: u32 = (1 << 24) - 1;

/// Negotiated operational parameters of a session and its connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the initiator declared it accepts: bounds our Data-In and text segments.
    pub initiator_max_recv_data_segment_len: u32,
    /// What we declared we accept: bounds the initiator's PDUs.
    pub target_max_recv_data_segment_len: u32,
    pub max_burst_len: u32,
    pub first_burst_len: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    /// iSCSIProtocolLevel (RFC 7144 §7.1.1): 2 lets the initiator use the task management
    /// functions of RFC 7144.
    pub protocol_level: u8,
}

impl Params {
    /// The RFC 7143 defaults, in force for any key not negotiated.
    pub fn rfc_defaults() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_data_segment_len: 8192,
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            protocol_level: 1,
        }
    }
}

/// Declarative and session keys captured from the login, not part of [`Params`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginKeys {
    pub initiator_name: Option<String>,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub session_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Normal,
    Discovery,
}

/// How a key is negotiated (RFC 7143 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Min { lo: u32, hi: u32 },
    Max { lo: u32, hi: u32 },
    Or,
    And,
}

/// Why a login must fail, derived from the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// A key offered twice, a security key outside the security stage, and the like.
    InitiatorError(String),
}

/// The responder side of a negotiation, kept across the PDUs of one login.
#[derive(Debug)]
pub struct Negotiator {
    limits: TargetLimits,
    pub params: Params,
    pub keys: LoginKeys,
    kind: Option<SessionKind>,
    /// Keys already answered: an offer repeated in the same login is a protocol error.
    answered: BTreeSet<String>,
    declared_mrdsl: bool,
}

/// Keys that only matter for normal sessions (RFC 7143 §13: "Irrelevant" in discovery).
const NORMAL_ONLY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Keys that declare rather than negotiate: recorded, not answered.
fn is_declarative(key: &str) -> bool {
    matches!(key, "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" | "MaxRecvDataSegmentLength")
}

impl Negotiator {
    pub fn new(limits: TargetLimits) -> Self {
        let mut params = Params::rfc_defaults();
        params.target_max_recv_data_segment_len = limits.max_recv_data_segment_len;
        Negotiator {
            limits,
            params,
            keys: LoginKeys::default(),
            kind: None,
            answered: BTreeSet::new(),
            declared_mrdsl: false,
        }
    }

    pub fn set_session_kind(&mut self, kind: SessionKind) {
        self.kind = Some(kind);
    }

    /// Answers one request's worth of offers (authentication keys are the login's, see
    /// `chap.rs`). Declarative keys are recorded and not answered.
    pub fn respond(&mut self, offers: &[(String, String)]) -> Result<Vec<(String, String)>, NegotiationError> {
        // What is irrelevant depends on the kind of session, which the first request declares
        // among the very keys it answers.
        if self.kind.is_none() && offers.iter().any(|(k, v)| k == "SessionType" && v == "Discovery") {
            self.kind = Some(SessionKind::Discovery);
        }
        let mut out = Vec::new();
        let mut declared_here = BTreeSet::new();
        for (key, value) in offers {
            // A declaration may come again in a later request (checked to be the same there)
            // but not twice in one: which of the two would count is anyone's guess (§6.2).
            if is_declarative(key) && !declared_here.insert(key.as_str()) {
                return Err(NegotiationError::InitiatorError(format!("key {key} declared twice in one request")));
            }
            if let Some(reply) = self.respond_one(key, value)? {
                out.push((key.clone(), reply));
            }
        }
        // FirstBurstLength must not exceed MaxBurstLength (§13.14), whatever was offered.
        if self.params.first_burst_len > self.params.max_burst_len {
            self.params.first_burst_len = self.params.max_burst_len;
            for (k, v) in &mut out {
                if k == "FirstBurstLength" && v.parse::<u32>().is_ok() {
                    *v = self.params.max_burst_len.to_string();
                }
            }
        }
        // FirstBurstLength is irrelevant when no unsolicited data can flow (§13.14).
        if self.params.initial_r2t && !self.params.immediate_data {
            for (k, v) in &mut out {
                if k == "FirstBurstLength" {
                    *v = "Irrelevant".into();
                }
            }
        }
        Ok(out)
    }

    /// Our declaration of MaxRecvDataSegmentLength, added once in the operational stage.
    pub fn declarations(&mut self) -> Vec<(String, String)> {
        if self.declared_mrdsl || self.kind.is_none() {
            return Vec::new();
        }
        self.declared_mrdsl = true;
        vec![("MaxRecvDataSegmentLength".into(), self.limits.max_recv_data_segment_len.to_string())]
    }

    /// Whether we declared our MaxRecvDataSegmentLength during this login.
    pub fn has_declared(&self) -> bool {
        self.declared_mrdsl
    }

    fn respond_one(&mut self, key: &str, value: &str) -> Result<Option<String>, NegotiationError> {
        if !is_declarative(key) && !key.starts_with("CHAP_") && !self.answered.insert(key.to_string()) {
            return Err(NegotiationError::InitiatorError(format!("key {key} offered twice")));
        }
        let discovery = self.kind == Some(SessionKind::Discovery);
        let reply = match key {
            "InitiatorName" => {
                self.keys.initiator_name = Some(value.to_string());
                None
            }
            "InitiatorAlias" => {
                self.keys.initiator_alias = Some(value.to_string());
                None
            }
            "TargetName" => {
                self.keys.target_name = Some(value.to_string());
                None
            }
            "SessionType" => {
                self.keys.session_type = Some(value.to_string());
                None
            }
            "MaxRecvDataSegmentLength" => {
                match parse_number(value).filter(|n| (SEGMENT_LEN_MIN as u64..=SEGMENT_LEN_MAX as u64).contains(n)) {
                    Some(n) => self.params.initiator_max_recv_data_segment_len = n as u32,
                    None => return Ok(Some("Reject".into())),
                }
                None
            }
            "HeaderDigest" | "DataDigest" => {
                let allowed = if key == "HeaderDigest" {
                    self.limits.header_digest_allowed
                } else {
                    self.limits.data_digest_allowed
                };
                let choice = value.split(',').find(|v| *v == "None" || (allowed && *v == "CRC32C"));
                match choice {
                    Some(v) => {
                        let on = v == "CRC32C";
                        if key == "HeaderDigest" {
                            self.params.header_digest = on;
                        } else {
                            self.params.data_digest = on;
                        }
                        Some(v.to_string())
                    }
                    None => Some("Reject".into()),
                }
            }
            _ if discovery && NORMAL_ONLY.contains(&key) => Some("Irrelevant".into()),
            "MaxConnections" => {
                self.numeric(value, Rule::Min { lo: 1, hi: 65535 }, 1, |p, v| p.max_connections = v as u16)
            }
            "InitialR2T" => {
                let ours = !self.limits.unsolicited_data;
                self.boolean(value, Rule::Or, ours, |p, v| p.initial_r2t = v)
            }
            "ImmediateData" => {
                let ours = self.limits.unsolicited_data;
                self.boolean(value, Rule::And, ours, |p, v| p.immediate_data = v)
            }
            "MaxBurstLength" => self.numeric(
                value,
                Rule::Min { lo: SEGMENT_LEN_MIN, hi: SEGMENT_LEN_MAX },
                self.limits.max_burst_len,
                |p, v| p.max_burst_len = v,
            ),
            "FirstBurstLength" => self.numeric(
                value,
                Rule::Min { lo: SEGMENT_LEN_MIN, hi: SEGMENT_LEN_MAX },
                self.limits.first_burst_len,
                |p, v| p.first_burst_len = v,
            ),
            "DefaultTime2Wait" => {
                self.numeric(value, Rule::Max { lo: 0, hi: 3600 }, self.limits.default_time2wait as u32, |p, v| {
                    p.default_time2wait = v as u16
                })
            }
            "DefaultTime2Retain" => {
                self.numeric(value, Rule::Min { lo: 0, hi: 3600 }, self.limits.default_time2retain as u32, |p, v| {
                    p.default_time2retain = v as u16
                })
            }
            "MaxOutstandingR2T" => {
                self.numeric(value, Rule::Min { lo: 1, hi: 65535 }, self.limits.max_outstanding_r2t as u32, |p, v| {
                    p.max_outstanding_r2t = v as u16
                })
            }
            // We deliver and accept data in order only; OR with Yes is always Yes.
            "DataPDUInOrder" => self.boolean(value, Rule::Or, true, |p, v| p.data_pdu_in_order = v),
            "DataSequenceInOrder" => self.boolean(value, Rule::Or, true, |p, v| p.data_sequence_in_order = v),
            "ErrorRecoveryLevel" => {
                self.numeric(value, Rule::Min { lo: 0, hi: 2 }, 0, |p, v| p.error_recovery_level = v as u8)
            }
            // RFC 7143 §13.25: obsolete marker keys. "No" for the booleans, "Reject" for the intervals.
            "OFMarker" | "IFMarker" => Some("No".into()),
            "OFMarkInt" | "IFMarkInt" => Some("Reject".into()),
            "TaskReporting" => Some(if value.split(',').any(|v| v == "RFC3720") { "RFC3720" } else { "Reject" }.into()),
            // RFC 7144 §7.1.1: we implement level 2 (RFC 7143 with RFC 7144's functions).
            "iSCSIProtocolLevel" => match parse_number(value) {
                Some(n) if n <= 31 => {
                    self.params.protocol_level = n.min(PROTOCOL_LEVEL as u64) as u8;
                    Some(self.params.protocol_level.to_string())
                }
                _ => Some("Reject".into()),
            },
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Some("Irrelevant".into()),
            "SendTargets" => Some("Irrelevant".into()),
            _ => Some("NotUnderstood".into()),
        };
        Ok(reply)
    }

    fn numeric(&mut self, value: &str, rule: Rule, ours: u32, set: impl FnOnce(&mut Params, u32)) -> Option<String> {
        let (lo, hi) = match rule {
            Rule::Min { lo, hi } | Rule::Max { lo, hi } => (lo, hi),
            _ => unreachable!("numeric rule"),
        };
        let Some(offer) = parse_number(value).filter(|n| (lo as u64..=hi as u64).contains(n)) else {
            return Some("Reject".into());
        };
        let offer = offer as u32;
        let result = match rule {
            Rule::Min { .. } => offer.min(ours),
            _ => offer.max(ours),
        };
        set(&mut self.params, result);
        Some(result.to_string())
    }

    fn boolean(&mut self, value: &str, rule: Rule, ours: bool, set: impl FnOnce(&mut Params, bool)) -> Option<String> {
        let offer = match value {
            "Yes" => true,
            "No" => false,
            _ => return Some("Reject".into()),
        };
        let result = match rule {
            Rule::Or => offer || ours,
            _ => offer && ours,
        };
        set(&mut self.params, result);
        Some(if result { "Yes" } else { "No" }.into())
    }
}

/// Parses an RFC 7143 numerical value: decimal, or hexadecimal with a 0x prefix.
pub fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn normal() -> Negotiator {
        let mut n = Negotiator::new(TargetLimits::default());
        n.set_session_kind(SessionKind::Normal);
        n
    }

    #[test]
    fn result_functions_follow_the_rfc() {
        let mut n = normal();
        let out = n
            .respond(&offers(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxOutstandingR2T", "1"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("MaxConnections", "4"),
                ("ErrorRecoveryLevel", "2"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("X-com.example.Foo", "1"),
            ]))
            .unwrap();
        let get = |k: &str| out.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(get("DataDigest"), Some("None"));
        assert_eq!(get("InitialR2T"), Some("No"));
        assert_eq!(get("ImmediateData"), Some("Yes"));
        assert_eq!(get("MaxBurstLength"), Some("1048576"));
        assert_eq!(get("MaxOutstandingR2T"), Some("1"));
        assert_eq!(get("DefaultTime2Wait"), Some("2"));
        assert_eq!(get("MaxConnections"), Some("1"));
        assert_eq!(get("ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get("MaxRecvDataSegmentLength"), None, "declarative: not answered");
        assert_eq!(get("X-com.example.Foo"), Some("NotUnderstood"));
        assert!(n.params.header_digest && !n.params.data_digest);
        assert_eq!(n.params.initiator_max_recv_data_segment_len, 262144);
        assert_eq!(n.params.max_burst_len, 1048576);
    }

    #[test]
    fn protocol_level_is_the_lower_of_ours_and_the_initiators() {
        for (offered, agreed) in [("1", "1"), ("2", "2"), ("31", "2")] {
            let mut n = normal();
            let out = n.respond(&offers(&[("iSCSIProtocolLevel", offered)])).unwrap();
            assert_eq!(out[0].1, agreed);
            assert_eq!(n.params.protocol_level.to_string(), agreed);
        }
        let mut n = normal();
        assert_eq!(n.respond(&offers(&[("iSCSIProtocolLevel", "32")])).unwrap()[0].1, "Reject");
        assert_eq!(n.params.protocol_level, 1, "RFC 7143's level unless negotiated");
    }

    #[test]
    fn invalid_values_are_rejected_and_keep_defaults() {
        let mut n = normal();
        let out =
            n.respond(&offers(&[("MaxBurstLength", "100"), ("InitialR2T", "Maybe"), ("HeaderDigest", "MD5")])).unwrap();
        assert!(out.iter().all(|(_, v)| v == "Reject"), "{out:?}");
        assert_eq!(n.params.max_burst_len, Params::rfc_defaults().max_burst_len);
    }

    #[test]
    fn discovery_sessions_answer_irrelevant() {
        let mut n = Negotiator::new(TargetLimits::default());
        n.set_session_kind(SessionKind::Discovery);
        let out = n.respond(&offers(&[("MaxBurstLength", "262144"), ("HeaderDigest", "None")])).unwrap();
        assert_eq!(out[0].1, "Irrelevant");
        assert_eq!(out[1].1, "None");
        // Declared in the same request as the keys it makes irrelevant.
        let mut n = Negotiator::new(TargetLimits::default());
        let out = n
            .respond(&offers(&[("MaxBurstLength", "262144"), ("SessionType", "Discovery"), ("InitialR2T", "No")]))
            .unwrap();
        assert_eq!(out, offers(&[("MaxBurstLength", "Irrelevant"), ("InitialR2T", "Irrelevant")]));
    }

    #[test]
    fn first_burst_is_irrelevant_without_unsolicited_data() {
        let mut n = normal();
        let out = n
            .respond(&offers(&[("InitialR2T", "Yes"), ("ImmediateData", "No"), ("FirstBurstLength", "4096")]))
            .unwrap();
        assert_eq!(out[2].1, "Irrelevant");
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = normal();
        let out = n.respond(&offers(&[("FirstBurstLength", "262144"), ("MaxBurstLength", "8192")])).unwrap();
        assert_eq!(out, vec![("FirstBurstLength".into(), "8192".into()), ("MaxBurstLength".into(), "8192".into())]);
        assert_eq!((n.params.first_burst_len, n.params.max_burst_len), (8192, 8192));
    }

    #[test]
    fn repeated_offer_is_an_initiator_error() {
        let mut n = normal();
        n.respond(&offers(&[("MaxBurstLength", "262144")])).unwrap();
        assert!(matches!(
            n.respond(&offers(&[("MaxBurstLength", "262144")])),
            Err(NegotiationError::InitiatorError(_))
        ));
    }

    #[test]
    fn a_declaration_twice_in_one_request_is_an_initiator_error() {
        let mut n = normal();
        let twice =
            offers(&[("InitiatorName", "iqn.2026-12.org.example:a"), ("InitiatorName", "iqn.2026-12.org.example:b")]);
        assert!(matches!(n.respond(&twice), Err(NegotiationError::InitiatorError(_))));
        // Once per request is fine, in later requests too (their sameness is the login's check).
        let mut n = normal();
        let once =
            offers(&[("InitiatorName", "iqn.2026-12.org.example:a"), ("TargetName", "iqn.2026-12.org.example:t")]);
        n.respond(&once).unwrap();
        n.respond(&once).unwrap();
    }

    #[test]
    fn numbers_parse_in_decimal_and_hex() {
        assert_eq!(parse_number("262144"), Some(262144));
        assert_eq!(parse_number("0x40000"), Some(262144));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
