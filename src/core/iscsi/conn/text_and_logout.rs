//! Text requests (SendTargets, multi-PDU continuation) and logout.

use super::*;

impl Connection {
    pub(super) fn on_text(&mut self, t: &TextRequest, data: &Bytes, ctx: &dyn ConnContext) {
        // The next part of a request the initiator sends in pieces: it copies the TTT of our
        // answer to the part before (RFC 7143 §11.10.4; the reserved tag is taken too, within
        // the same exchange). Anything else starts a new request (§11.10.4: a new request
        // resets the target's state), dropping a half-gathered one.
        let continuing =
            self.text_in_exchange.is_some_and(|(itt, ttt)| t.itt == itt && (t.ttt == ttt || t.ttt == RESERVED_TAG));
        self.text_in_exchange = None;
        if !continuing {
            self.text_in.clear();
        }
        // The initiator asks for the next piece of a long response.
        if t.ttt != RESERVED_TAG && !continuing {
            match self.text_out.as_mut() {
                Some(out) if out.ttt == t.ttt => {
                    let segment = out.segments.pop_front().unwrap_or_default();
                    let more = !out.segments.is_empty();
                    let ttt = out.ttt;
                    if !more {
                        self.text_out = None;
                    }
                    self.send_text_response(t, segment, more, if more { ttt } else { RESERVED_TAG });
                }
                _ => {
                    let header = Pdu::new(*t).bhs.encode();
                    self.reject(reject_reason::INVALID_PDU_FIELD, &header);
                }
            }
            return;
        }
        self.text_out = None;
        if let Err(e) = self.text_in.push(data) {
            tracing::info!(error = %e, "text request too long");
            self.text_in.clear();
            let header = Pdu::new(*t).bhs.encode();
            self.reject(reject_reason::PROTOCOL_ERROR, &header);
            return;
        }
        if t.cont {
            let ttt = self.alloc_ttt();
            self.text_in_exchange = Some((t.itt, ttt));
            self.send_text_response(t, Bytes::new(), false, ttt);
            return;
        }
        let pairs = match self.text_in.finish() {
            Ok(pairs) => pairs,
            Err(e) => {
                tracing::info!(error = %e, "malformed text request");
                let header = Pdu::new(*t).bhs.encode();
                self.reject(reject_reason::PROTOCOL_ERROR, &header);
                return;
            }
        };
        let mut reply: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                reply.extend(self.send_targets(v, ctx));
            } else {
                // Operational keys cannot be renegotiated in full-feature phase here.
                reply.push((k.clone(), "Reject".into()));
            }
        }
        let body = text::encode(&reply);
        let mut segments: VecDeque<Bytes> =
            text::segments(&body, self.params.initiator_max_recv_data_segment_len as usize).into();
        let first = segments.pop_front().unwrap_or_default();
        if segments.is_empty() {
            self.send_text_response(t, first, false, RESERVED_TAG);
        } else {
            let ttt = self.alloc_ttt();
            self.text_out = Some(TextOut { ttt, segments });
            self.send_text_response(t, first, true, ttt);
        }
    }

    pub(super) fn send_targets(&self, which: &str, ctx: &dyn ConnContext) -> Vec<(String, String)> {
        let all = ctx.targets();
        let selected: Vec<&TargetRecord> = match which {
            "All" if self.kind == SessionKind::Discovery => all.iter().collect(),
            "All" => return vec![("SendTargets".into(), "Reject".into())],
            "" => {
                let own = ctx.own_target();
                all.iter().filter(|t| Some(&t.name) == own.as_ref()).collect()
            }
            name => all.iter().filter(|t| t.name == name).collect(),
        };
        let mut out = Vec::new();
        for t in selected {
            out.push(("TargetName".to_string(), t.name.clone()));
            for a in &t.addresses {
                out.push(("TargetAddress".to_string(), a.clone()));
            }
        }
        out
    }

    pub(super) fn send_text_response(&mut self, t: &TextRequest, data: Bytes, cont: bool, ttt: u32) {
        let r = TextResponse {
            fin: !cont && ttt == RESERVED_TAG,
            cont,
            lun: t.lun,
            itt: t.itt,
            ttt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        };
        self.send(Pdu::with_data(r, data));
    }

    pub(super) fn on_logout(&mut self, l: &LogoutRequest) {
        let response = match l.reason {
            logout::CLOSE_SESSION => logout::CLOSED,
            logout::CLOSE_CONNECTION if l.cid == self.cid => logout::CLOSED,
            logout::CLOSE_CONNECTION => logout::CID_NOT_FOUND,
            _ => logout::RECOVERY_NOT_SUPPORTED,
        };
        let r = LogoutResponse {
            response,
            itt: l.itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            time2wait: 0,
            time2retain: 0,
        };
        self.send(Pdu::new(r));
        if response == logout::CLOSED {
            // Running commands finish (their responses are not sent); nothing else is accepted.
            self.abort_where(|_| true);
            self.closing = true;
            self.out.push(Output::Close(CloseReason::Logout));
        }
    }

    /// Asks the initiator to log out (graceful shutdown).
    pub fn request_logout(&mut self, time_to_logout_secs: u16) {
        let msg = AsyncMessage {
            lun: 0,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            event: async_event::LOGOUT_REQUESTED,
            vcode: 0,
            param1: 0,
            param2: 0,
            param3: time_to_logout_secs,
        };
        self.send(Pdu::new(msg));
    }
}
