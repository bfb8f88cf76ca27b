use super::*;
use proptest::prelude::*;

fn any_bhs() -> impl Strategy<Value = Bhs> {
    let u = any::<u32>;
    prop_oneof![
        (any::<bool>(), any::<u64>(), u(), u(), u(), u()).prop_map(
            |(immediate, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
                Bhs::NopOut(NopOut { immediate, lun, itt, ttt, cmd_sn, exp_stat_sn })
            }
        ),
        (any::<[bool; 4]>(), 0u8..8, any::<u64>(), u(), u(), u(), u(), any::<[u8; 16]>()).prop_map(
            |(b, attr, lun, itt, expected_data_len, cmd_sn, exp_stat_sn, cdb)| {
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: b[0],
                    fin: b[1],
                    read: b[2],
                    write: b[3],
                    attr,
                    lun,
                    itt,
                    expected_data_len,
                    cmd_sn,
                    exp_stat_sn,
                    cdb,
                })
            }
        ),
        (any::<bool>(), 0u8..128, any::<u64>(), u(), u(), u(), u(), u(), u()).prop_map(
            |(immediate, function, lun, itt, referenced_task_tag, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn)| {
                Bhs::TaskMgmtRequest(TaskMgmtRequest {
                    immediate,
                    function,
                    lun,
                    itt,
                    referenced_task_tag,
                    cmd_sn,
                    exp_stat_sn,
                    ref_cmd_sn,
                    exp_data_sn,
                })
            }
        ),
        (
            any::<[bool; 2]>(),
            0u8..4,
            0u8..4,
            any::<[u8; 2]>(),
            0u64..(1 << 48),
            any::<u16>(),
            u(),
            any::<u16>(),
            u(),
            u()
        )
            .prop_map(|(b, csg, nsg, v, isid, tsih, itt, cid, cmd_sn, exp_stat_sn)| {
                Bhs::LoginRequest(LoginRequest {
                    transit: b[0],
                    cont: b[1],
                    csg,
                    nsg,
                    version_max: v[0],
                    version_min: v[1],
                    isid,
                    tsih,
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn,
                })
            }),
        (any::<[bool; 3]>(), any::<u64>(), u(), u(), u(), u()).prop_map(|(b, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
            Bhs::TextRequest(TextRequest { immediate: b[0], fin: b[1], cont: b[2], lun, itt, ttt, cmd_sn, exp_stat_sn })
        }),
        (any::<bool>(), any::<u64>(), u(), u(), u(), u(), u()).prop_map(
            |(fin, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset)| {
                Bhs::DataOut(DataOut { fin, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset })
            }
        ),
        (any::<bool>(), 0u8..128, u(), any::<u16>(), u(), u()).prop_map(
            |(immediate, reason, itt, cid, cmd_sn, exp_stat_sn)| {
                Bhs::LogoutRequest(LogoutRequest { immediate, reason, itt, cid, cmd_sn, exp_stat_sn })
            }
        ),
        (0u8..16, any::<u64>(), u(), u(), u(), u(), u()).prop_map(
            |(snack_type, lun, itt, ttt, exp_stat_sn, beg_run, run_length)| {
                Bhs::SnackRequest(SnackRequest { snack_type, lun, itt, ttt, exp_stat_sn, beg_run, run_length })
            }
        ),
        (any::<u64>(), u(), u(), u(), u(), u()).prop_map(|(lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
            Bhs::NopIn(NopIn { lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn })
        }),
        (any::<[bool; 4]>(), any::<[u8; 2]>(), u(), u(), (u(), u(), u()), u(), u(), u()).prop_map(
            |(b, rs, itt, snack_tag, (stat_sn, exp_cmd_sn, max_cmd_sn), exp_data_sn, bidi_residual, residual)| {
                Bhs::ScsiResponse(ScsiResponse {
                    bidi_overflow: b[0],
                    bidi_underflow: b[1],
                    overflow: b[2],
                    underflow: b[3],
                    response: rs[0],
                    status: rs[1],
                    itt,
                    snack_tag,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    exp_data_sn,
                    bidi_residual,
                    residual,
                })
            }
        ),
        (any::<u8>(), any::<[u8; 3]>(), u(), u(), u(), u()).prop_map(
            |(response, additional, itt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
                Bhs::TaskMgmtResponse(TaskMgmtResponse { response, additional, itt, stat_sn, exp_cmd_sn, max_cmd_sn })
            }
        ),
        (any::<[bool; 2]>(), 0u8..4, 0u8..4, any::<[u8; 4]>(), 0u64..(1 << 48), any::<u16>(), u(), (u(), u(), u()))
            .prop_map(|(b, csg, nsg, v, isid, tsih, itt, (stat_sn, exp_cmd_sn, max_cmd_sn))| {
                Bhs::LoginResponse(LoginResponse {
                    transit: b[0],
                    cont: b[1],
                    csg,
                    nsg,
                    version_max: v[0],
                    version_active: v[1],
                    isid,
                    tsih,
                    itt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    status_class: v[2],
                    status_detail: v[3],
                })
            }),
        (any::<[bool; 2]>(), any::<u64>(), u(), u(), u(), u(), u()).prop_map(
            |(b, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
                Bhs::TextResponse(TextResponse {
                    fin: b[0],
                    cont: b[1],
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                })
            }
        ),
        (any::<[bool; 5]>(), any::<u8>(), any::<u64>(), u(), u(), (u(), u(), u()), (u(), u(), u())).prop_map(
            |(b, status, lun, itt, ttt, (stat_sn, exp_cmd_sn, max_cmd_sn), (data_sn, buffer_offset, residual))| {
                Bhs::DataIn(DataIn {
                    fin: b[0],
                    ack: b[1],
                    overflow: b[2],
                    underflow: b[3],
                    status_present: b[4],
                    status,
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    data_sn,
                    buffer_offset,
                    residual,
                })
            }
        ),
        (any::<u8>(), u(), u(), u(), u(), any::<u16>(), any::<u16>()).prop_map(
            |(response, itt, stat_sn, exp_cmd_sn, max_cmd_sn, time2wait, time2retain)| {
                Bhs::LogoutResponse(LogoutResponse {
                    response,
                    itt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    time2wait,
                    time2retain,
                })
            }
        ),
        (any::<u64>(), u(), u(), (u(), u(), u()), u(), u(), u()).prop_map(
            |(lun, itt, ttt, (stat_sn, exp_cmd_sn, max_cmd_sn), r2t_sn, buffer_offset, desired_len)| {
                Bhs::R2t(R2t { lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, buffer_offset, desired_len })
            }
        ),
        (any::<u64>(), (u(), u(), u()), any::<[u8; 2]>(), any::<[u16; 3]>()).prop_map(
            |(lun, (stat_sn, exp_cmd_sn, max_cmd_sn), ev, p)| {
                Bhs::AsyncMessage(AsyncMessage {
                    lun,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    event: ev[0],
                    vcode: ev[1],
                    param1: p[0],
                    param2: p[1],
                    param3: p[2],
                })
            }
        ),
        (any::<u8>(), u(), u(), u(), u()).prop_map(|(reason, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn)| {
            Bhs::Reject(Reject { reason, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn })
        }),
    ]
}

fn any_ahs() -> impl Strategy<Value = Vec<Ahs>> {
    proptest::collection::vec(
        (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(ahs_type, specific, data)| Ahs { ahs_type, specific, data: Bytes::from(data) }),
        0..4,
    )
}

fn any_digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

const LIMITS: Limits = Limits { data_segment_len_max: 1 << 16 };

proptest! {
    #[test]
    fn pdu_round_trips(bhs in any_bhs(), ahs in any_ahs(), data in proptest::collection::vec(any::<u8>(), 0..600),
                       digests in any_digests()) {
        let pdu = Pdu { bhs, ahs, data: Bytes::from(data) };
        let wire = pdu.encode(digests).to_vec();
        prop_assert_eq!(wire.len() % 4, 0);
        let mut buf = BytesMut::from(&wire[..]);
        let back = Pdu::decode(&mut buf, digests, LIMITS).unwrap().unwrap();
        prop_assert_eq!(back, pdu);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn partial_input_needs_more_bytes(bhs in any_bhs(), data in proptest::collection::vec(any::<u8>(), 1..300),
                                      digests in any_digests(), cut in any::<prop::sample::Index>()) {
        let pdu = Pdu { bhs, ahs: vec![], data: Bytes::from(data) };
        let wire = pdu.encode(digests).to_vec();
        let cut = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(Pdu::decode(&mut buf, digests, LIMITS), Ok(None));
        prop_assert_eq!(buf.len(), cut, "nothing consumed on a partial PDU");
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), digests in any_digests()) {
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..8 {
            match Pdu::decode(&mut buf, digests, LIMITS) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn corrupting_a_header_byte_is_caught_by_the_header_digest(bhs in any_bhs(), at in 0usize..48, flip in 1u8..=255) {
        let digests = Digests { header: true, data: false };
        let mut wire = Pdu::new(bhs).encode(digests).to_vec();
        wire[at] ^= flip;
        let mut buf = BytesMut::from(&wire[..]);
        match Pdu::decode(&mut buf, digests, LIMITS) {
            // A flipped length byte may make the decoder wait for more bytes; that is fine.
            Ok(None) => prop_assert!((4..8).contains(&at)),
            Err(PduError::HeaderDigest { .. }) | Err(PduError::DataSegmentTooLong { .. }) => {}
            other => prop_assert!(false, "corruption not detected: {:?}", other),
        }
    }

    #[test]
    fn text_round_trips(pairs in proptest::collection::vec(("[a-zA-Z0-9.+@_-]{1,63}", "[ -~]{0,300}"), 0..20)) {
        let wire = text::encode(&pairs);
        let back = text::parse(&wire).unwrap();
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn text_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = text::parse(&bytes);
    }
}

#[test]
fn data_digest_error_consumes_the_pdu_and_keeps_the_header() {
    let digests = Digests { header: true, data: true };
    let pdu = Pdu::with_data(NopOut { itt: 7, ..Default::default() }, Bytes::from_static(b"hello"));
    let mut wire = pdu.encode(digests).to_vec();
    wire[52] ^= 1; // first data byte, after BHS + header digest
    let next = Pdu::new(NopOut { itt: 8, ..Default::default() }).encode(digests).to_vec();
    wire.extend_from_slice(&next);
    let mut buf = BytesMut::from(&wire[..]);
    let err = Pdu::decode(&mut buf, digests, LIMITS).unwrap_err();
    assert!(matches!(err, PduError::DataDigest { opcode: Opcode::NopOut, .. }));
    assert_eq!(err.rejectable_header().unwrap()[0], 0x00);
    let following = Pdu::decode(&mut buf, digests, LIMITS).unwrap().unwrap();
    assert_eq!(following.bhs.itt(), Some(8));
}

#[test]
fn oversized_data_segment_is_refused_before_buffering() {
    let mut header = [0u8; 48];
    header[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(
        Pdu::decode(&mut buf, Digests::default(), Limits::default()),
        Err(PduError::DataSegmentTooLong { len: 0xff_ffff, max: 8192 })
    );
}

#[test]
fn unknown_opcode_is_typed_and_consumed() {
    let mut header = [0u8; 48];
    header[0] = 0x1c;
    let mut buf = BytesMut::from(&header[..]);
    let err = Pdu::decode(&mut buf, Digests::default(), LIMITS).unwrap_err();
    assert!(matches!(err, PduError::UnknownOpcode { opcode: 0x1c, .. }));
    assert!(buf.is_empty());
}

#[test]
fn malformed_ahs_is_rejected() {
    let mut header = [0u8; 52];
    header[0] = 0x01;
    header[4] = 1; // one word of AHS
    header[48..52].copy_from_slice(&[0x00, 0x10, 0x01, 0x00]); // claims 16 bytes
    let mut buf = BytesMut::from(&header[..]);
    let err = Pdu::decode(&mut buf, Digests::default(), LIMITS).unwrap_err();
    assert!(matches!(err, PduError::Malformed { opcode: Opcode::ScsiCommand, .. }));
}

#[test]
fn extended_cdb_ahs_length_follows_rfc() {
    // A 32-byte CDB: 16 bytes in the BHS, 16 in an AHS of AHSLength 17 (CDBLength - 15).
    let mut pdu = Pdu::new(ScsiCommand::default());
    pdu.ahs.push(Ahs { ahs_type: AHS_EXTENDED_CDB, specific: 0, data: Bytes::from(vec![0xab; 16]) });
    let wire = pdu.encode(Digests::default()).to_vec();
    assert_eq!(wire[4], 5, "TotalAHSLength in words");
    assert_eq!(&wire[48..52], &[0, 17, 1, 0]);
    assert_eq!(wire.len(), 48 + 20);
}

#[test]
fn text_rejects_bad_input() {
    assert_eq!(text::parse(b"A=1"), Err(text::TextError::Unterminated));
    assert!(matches!(text::parse(b"novalue\0"), Err(text::TextError::MissingEquals(_))));
    assert!(matches!(text::parse(b"bad key=1\0"), Err(text::TextError::InvalidKey(_))));
    assert!(matches!(text::parse(b"=1\0"), Err(text::TextError::InvalidKey(_))));
    let long = format!("K={}\0", "v".repeat(text::VALUE_LEN_MAX + 1));
    assert!(matches!(text::parse(long.as_bytes()), Err(text::TextError::ValueTooLong(_))));
    assert_eq!(text::parse(b"A=1\0\0\0").unwrap(), vec![("A".to_string(), "1".to_string())]);
    assert_eq!(text::parse(b"").unwrap(), vec![]);
}

#[test]
fn text_buffer_joins_split_pairs_and_bounds_size() {
    let mut tb = text::TextBuffer::default();
    tb.push(b"Header").unwrap();
    tb.push(b"Digest=None\0Max").unwrap();
    tb.push(b"Burst=1\0").unwrap();
    assert_eq!(tb.finish().unwrap().len(), 2);
    assert!(tb.is_empty());
    let big = vec![b'a'; text::TEXT_LEN_MAX];
    tb.push(&big).unwrap();
    assert!(matches!(tb.push(b"x"), Err(text::TextError::TooLong(_))));
}
