//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and must never panic; each checks a
//! property on the way (round trips, bounded output).

use bytes::BytesMut;

use rtgt::iscsi::login::{Login, LoginContext, LoginOutcome};
use rtgt::iscsi::params::TargetLimits;
use rtgt::pdu::{Bhs, Digests, Limits, Pdu, text};

const LIMITS: Limits = Limits { data_segment_len_max: 64 * 1024 };

/// Decodes PDUs from `data` under every digest setting; each decoded PDU must re-encode to
/// bytes that decode to the same PDU.
pub fn pdu_decode(data: &[u8]) {
    for (header, data_digest) in [(false, false), (true, false), (true, true)] {
        let digests = Digests { header, data: data_digest };
        let mut buf = BytesMut::from(data);
        for _ in 0..64 {
            match Pdu::decode(&mut buf, digests, LIMITS) {
                Ok(Some(pdu)) => {
                    let wire = pdu.encode(digests).to_vec();
                    let mut again = BytesMut::from(&wire[..]);
                    let back = Pdu::decode(&mut again, digests, LIMITS).expect("re-encoded PDU decodes");
                    assert_eq!(back.as_ref(), Some(&pdu), "PDU round trip");
                    assert!(again.is_empty());
                }
                Ok(None) => break,
                Err(e) if e.rejectable_header().is_some() => continue,
                Err(_) => break,
            }
        }
    }
}

/// Parses text key=value data; what parses must round-trip through the encoder.
pub fn text_parse(data: &[u8]) {
    if let Ok(pairs) = text::parse(data) {
        let wire = text::encode(&pairs);
        assert_eq!(text::parse(&wire).expect("re-encoded text parses"), pairs);
    }
}

/// A target named `iqn.2026-11.dev.rtgt:fuzz`; with `chap`, it requires CHAP (user "fuzz").
struct NullContext {
    chap: bool,
}

impl LoginContext for NullContext {
    fn target_alias(&self, name: &str) -> Option<Option<String>> {
        (name == "iqn.2026-11.dev.rtgt:fuzz").then_some(None)
    }
    fn session_exists(&self, tsih: u16) -> bool {
        tsih == 1
    }
    fn register_session(&mut self, _: &LoginOutcome) -> Result<u16, (u8, u8)> {
        Ok(7)
    }
    fn portal_group_tag(&self) -> u16 {
        1
    }
    fn authorize(&self, initiator: &str, _: Option<&str>) -> rtgt::iscsi::login::Authorization {
        use rtgt::iscsi::chap::{ChapSecrets, Secret};
        rtgt::iscsi::login::Authorization {
            allowed: !initiator.contains("denied"),
            chap: self.chap.then(|| ChapSecrets {
                user: "fuzz".into(),
                secret: Secret::new("fuzz-secret-123"),
                mutual: Some(("target".into(), Secret::new("target-secret-4"))),
            }),
        }
    }
}

/// Feeds decoded Login Requests to the login state machine until it completes or fails. The
/// first byte, if odd, makes the target require CHAP (the CHAP exchange is fuzzed then, with a
/// fixed challenge so that crafted responses can match).
pub fn login(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut buf = BytesMut::from(data);
    let fixed = Box::new(|b: &mut [u8]| b.fill(0x5a));
    let mut login = Login::new(TargetLimits::default(), 32).with_random(fixed);
    let mut ctx = NullContext { chap: mode & 1 == 1 };
    for _ in 0..32 {
        let Ok(Some(pdu)) = Pdu::decode(&mut buf, Digests::default(), Limits::default()) else { return };
        let Bhs::LoginRequest(req) = pdu.bhs else { return };
        match login.on_request(&req, &pdu.data, &mut ctx) {
            rtgt::iscsi::login::Step::Reply(resp) => assert!(resp.data.len() <= 8192),
            _ => return,
        }
    }
}

/// The parsers of what the S3 volume and the local store read back from storage: log objects
/// (either format), volume metadata, the lease, the local store's object header. The first byte
/// picks one. What parses must re-encode to what parses the same.
pub fn volume_format(data: &[u8]) {
    use rtgt::s3::local::object_file;
    use rtgt::s3::volume::format::{self, LeaseRecord, VolumeMeta};
    let Some((&pick, rest)) = data.split_first() else { return };
    match pick % 5 {
        0 | 1 => {
            let body = bytes::Bytes::copy_from_slice(rest);
            // With the CRC of the body in the metadata, or none.
            let crc = (pick % 5 == 1).then(|| format::log_metadata(rest)[format::CRC_METADATA].clone());
            if let Ok(parsed) = format::parse_log(&body, crc.as_ref()) {
                let again = format::encode_log(1, &parsed.records);
                assert_eq!(format::parse_log(&again, None).expect("re-encoded log parses").records, parsed.records);
            }
        }
        2 => {
            if let Ok(meta) = VolumeMeta::parse(rest) {
                assert_eq!(VolumeMeta::parse(&meta.encode()).expect("metadata round trip"), meta);
            }
        }
        3 => {
            if let Ok(lease) = LeaseRecord::parse(rest) {
                assert_eq!(LeaseRecord::parse(&lease.encode()).expect("lease round trip"), lease);
            }
        }
        _ => {
            if let Ok(desc) = object_file::parse_header(rest) {
                let header = object_file::encode_header(&desc).expect("a parsed header fits");
                assert_eq!(object_file::parse_header(&header).expect("header round trip"), desc);
            }
        }
    }
}

/// The ACL matcher: the first line is a network ("10.0.0.0/8"), the next an address, the
/// rest initiator names. Whatever parses must match consistently: a network contains its own
/// address, and an address is matched the same as its IPv4-mapped IPv6 form.
pub fn access(data: &[u8]) {
    use rtgt::server::access::{Access, Network};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let (Some(net), Some(addr)) = (lines.next(), lines.next()) else { return };
    let Ok(network) = Network::parse(net) else { return };
    if let Ok(own) = net.split('/').next().unwrap_or("").trim().parse::<std::net::IpAddr>() {
        assert!(network.contains(own), "{net} does not contain its own address");
    }
    let Ok(ip) = addr.trim().parse::<std::net::IpAddr>() else { return };
    if let std::net::IpAddr::V4(v4) = ip {
        assert_eq!(network.contains(ip), network.contains(std::net::IpAddr::V6(v4.to_ipv6_mapped())));
    }
    let names: Vec<String> = lines.map(str::to_string).collect();
    let access = Access {
        initiators: Some(names.iter().map(|n| n.to_lowercase()).collect()),
        networks: Some(vec![network]),
        chap: None,
        resetters: Some(names.iter().take(1).map(|n| n.to_lowercase()).collect()),
    };
    for name in &names {
        assert_eq!(access.admits(name, ip), network.contains(ip), "{name:?} from {ip}");
        if name.is_ascii() {
            assert_eq!(access.admits(&name.to_uppercase(), ip), access.admits(&name.to_lowercase(), ip));
        }
        assert_eq!(access.may_reset(name, true), name.to_lowercase() == names[0].to_lowercase(), "{name:?}");
    }
}
