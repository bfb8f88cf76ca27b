//! iSCSI TransportIDs (SPC-4 §7.6.4.6): how PERSISTENT RESERVE OUT names an initiator port
//! that is not the sender (SPEC_I_PT, REGISTER AND MOVE). Only format 01b, the initiator port
//! ("name,i,0xISID"), is accepted: registrations belong to I_T nexuses, and format 00b names
//! an initiator device without saying which of its ports.

use super::sense::Sense;

/// The protocol identifier of iSCSI.
const ISCSI: u8 = 0x05;
/// Format 01b: an initiator port.
const INITIATOR_PORT: u8 = 0x01;
/// The separator between the iSCSI name and the ISID (RFC 7143 §4.2.7.1's port name).
const SEPARATOR: &str = ",i,0x";
/// The longest iSCSI name (RFC 7143 §4.2.7.1).
const NAME_MAX: usize = 223;

/// An iSCSI initiator port: its name and ISID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorPort {
    pub name: String,
    pub isid: u64,
}

/// Every TransportID of `data`, which starts at byte `at` of the parameter list (for the field
/// pointer of INVALID FIELD IN PARAMETER LIST).
pub fn parse_all(mut data: &[u8], mut at: usize) -> Result<Vec<InitiatorPort>, Sense> {
    let mut ports = Vec::new();
    while !data.is_empty() {
        let (port, used) = parse(data, at)?;
        ports.push(port);
        data = &data[used..];
        at += used;
    }
    Ok(ports)
}

/// The TransportID at the start of `data` and its length in bytes.
pub fn parse(data: &[u8], at: usize) -> Result<(InitiatorPort, usize), Sense> {
    let invalid = |offset: usize| Sense::invalid_param((at + offset).min(u16::MAX as usize) as u16);
    if data.len() < 4 {
        return Err(invalid(0));
    }
    if data[0] & 0x0f != ISCSI || data[0] >> 6 != INITIATOR_PORT {
        return Err(invalid(0));
    }
    // ADDITIONAL LENGTH: at least 20, a multiple of four.
    let additional = u16::from_be_bytes([data[2], data[3]]) as usize;
    if additional < 20 || !additional.is_multiple_of(4) || 4 + additional > data.len() {
        return Err(invalid(2));
    }
    let text = &data[4..4 + additional];
    let end = text.iter().position(|b| *b == 0).ok_or(invalid(4))?;
    let text = std::str::from_utf8(&text[..end]).map_err(|_| invalid(4))?;
    let port = port_name(text).ok_or(invalid(4))?;
    Ok((port, 4 + additional))
}

/// "name,i,0xISID" (the separator in any case), with a name of 1-223 bytes and an ISID of at
/// most 12 hexadecimal digits.
fn port_name(text: &str) -> Option<InitiatorPort> {
    let split = text.to_ascii_lowercase().find(SEPARATOR)?;
    let (name, isid) = (&text[..split], &text[split + SEPARATOR.len()..]);
    if name.is_empty() || name.len() > NAME_MAX || isid.is_empty() || isid.len() > 12 {
        return None;
    }
    let isid = u64::from_str_radix(isid, 16).ok()?;
    Some(InitiatorPort { name: name.to_string(), isid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport_id(format: u8, text: &str) -> Vec<u8> {
        let mut name = text.as_bytes().to_vec();
        name.push(0);
        name.resize(name.len().div_ceil(4).max(5) * 4, 0);
        let mut out = vec![(format << 6) | ISCSI, 0];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(&name);
        out
    }

    #[test]
    fn initiator_ports_are_read_in_sequence() {
        let mut data = transport_id(1, "iqn.2026-12.org.example:a,i,0x80123456789a");
        data.extend(transport_id(1, "iqn.b,I,0X23D000000001"));
        let ports = parse_all(&data, 28).unwrap();
        assert_eq!(
            ports,
            [
                InitiatorPort { name: "iqn.2026-12.org.example:a".into(), isid: 0x8012_3456_789a },
                InitiatorPort { name: "iqn.b".into(), isid: 0x23d0_0000_0001 },
            ]
        );
    }

    #[test]
    fn what_names_no_initiator_port_is_an_invalid_field_at_its_offset() {
        let device = transport_id(0, "iqn.a");
        let fibre = {
            let mut t = transport_id(1, "iqn.a,i,0x1");
            t[0] = 0x40;
            t
        };
        let no_isid = transport_id(1, "iqn.a");
        let long_isid = transport_id(1, "iqn.a,i,0x1234567890abc");
        let mut unterminated = transport_id(1, "iqn.a,i,0x1");
        unterminated.iter_mut().skip(4).for_each(|b| *b = b'a');
        let mut short = transport_id(1, "iqn.a,i,0x1");
        short.truncate(short.len() - 4);
        for (bad, offset) in [(device, 0), (fibre, 0), (no_isid, 4), (long_isid, 4), (unterminated, 4), (short, 2)] {
            let sense = parse_all(&bad, 28).unwrap_err();
            assert_eq!(sense, Sense::invalid_param(28 + offset), "{bad:?}");
        }
    }
}
