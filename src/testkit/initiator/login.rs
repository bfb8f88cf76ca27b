//! Login: the security and operational negotiation of a new session.

use tokio::io::{AsyncRead, AsyncWrite};

use super::*;

pub(super) async fn run_login<R, W>(
    reader: &mut PduReader<R>,
    writer: &mut PduWriter<W>,
    config: &InitiatorConfig,
    target: Option<&str>,
) -> Result<(Negotiated, u32, u32, u32)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
    let digest = |b: bool| if b { "CRC32C,None" } else { "None" }.to_string();
    let mut identity = vec![("InitiatorName".to_string(), config.initiator_name.clone())];
    match target {
        Some(t) => {
            identity.push(("TargetName".into(), t.to_string()));
            identity.push(("SessionType".into(), "Normal".into()));
        }
        None => identity.push(("SessionType".into(), "Discovery".into())),
    }
    let mut operational = vec![
        ("HeaderDigest".to_string(), digest(config.header_digest)),
        ("DataDigest".into(), digest(config.data_digest)),
        ("MaxRecvDataSegmentLength".into(), config.max_recv_data_segment_len.to_string()),
        ("ErrorRecoveryLevel".into(), "0".into()),
    ];
    if target.is_some() {
        operational.extend([
            ("InitialR2T".to_string(), yes_no(config.initial_r2t)),
            ("ImmediateData".into(), yes_no(config.immediate_data)),
            ("MaxBurstLength".into(), config.max_burst_len.to_string()),
            ("FirstBurstLength".into(), config.first_burst_len.to_string()),
            ("MaxConnections".into(), "1".into()),
            ("MaxOutstandingR2T".into(), "1".into()),
        ]);
        if let Some(level) = config.protocol_level {
            operational.push(("iSCSIProtocolLevel".into(), level.to_string()));
        }
    }
    let cmd_sn = 1u32;
    let mut n = Negotiated {
        header_digest: false,
        data_digest: false,
        target_max_recv_data_segment_len: 8192,
        max_burst_len: 262_144,
        first_burst_len: 65_536,
        immediate_data: true,
        initial_r2t: true,
        tsih: 0,
    };
    // (current stage, next stage, keys)
    let mut stages: Vec<(u8, u8, text::Pairs)> = Vec::new();
    if config.security_stage {
        let mut keys = identity.clone();
        keys.push(("AuthMethod".into(), "None".into()));
        stages.push((stage::SECURITY, stage::OPERATIONAL, keys));
        stages.push((stage::OPERATIONAL, stage::FULL_FEATURE, operational));
    } else {
        let mut keys = identity;
        keys.extend(operational);
        stages.push((stage::OPERATIONAL, stage::FULL_FEATURE, keys));
    }
    let mut exp_stat_sn = 0;
    let mut max_cmd_sn = cmd_sn;
    for (csg, nsg, keys) in stages {
        let mut data = text::encode(&keys);
        // Retry with no keys while the target answers T=0 (it wants more negotiation).
        for _ in 0..16 {
            let req = LoginRequest {
                transit: true,
                cont: false,
                csg,
                nsg,
                version_max: 0,
                version_min: 0,
                isid: config.isid,
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn,
                exp_stat_sn,
            };
            writer.write(Pdu::with_data(req, data.clone()).encode(Digests::default())).await?;
            let limits = Limits { data_segment_len_max: 8192 };
            let pdu = match reader.next(Digests::default(), limits).await? {
                ReadEvent::Pdu(p) => p,
                ReadEvent::Bad(e) => return Err(Error::Protocol(e.to_string())),
                ReadEvent::Eof => return Err(Error::Io("the target closed the connection during login".into())),
            };
            let Bhs::LoginResponse(r) = pdu.bhs else {
                return Err(Error::Protocol(format!("expected a login response, got {:?}", pdu.opcode())));
            };
            if r.status_class != 0 {
                return Err(Error::Login { class: r.status_class, detail: r.status_detail });
            }
            exp_stat_sn = r.stat_sn.wrapping_add(1);
            max_cmd_sn = r.max_cmd_sn;
            n.tsih = r.tsih;
            let pairs = text::parse(&pdu.data).map_err(|e| Error::Protocol(e.to_string()))?;
            for (k, v) in &pairs {
                let num = parse_number(v).map(|x| x as u32);
                match (k.as_str(), v.as_str()) {
                    ("HeaderDigest", v) => n.header_digest = v == "CRC32C",
                    ("DataDigest", v) => n.data_digest = v == "CRC32C",
                    ("MaxRecvDataSegmentLength", _) => n.target_max_recv_data_segment_len = num.unwrap_or(8192),
                    ("MaxBurstLength", _) => n.max_burst_len = num.unwrap_or(n.max_burst_len),
                    ("FirstBurstLength", _) => n.first_burst_len = num.unwrap_or(n.first_burst_len),
                    ("ImmediateData", v) => n.immediate_data = v == "Yes",
                    ("InitialR2T", v) => n.initial_r2t = v == "Yes",
                    _ => {}
                }
            }
            data = Bytes::new();
            if r.transit {
                break;
            }
        }
    }
    Ok((n, cmd_sn, max_cmd_sn, exp_stat_sn))
}
