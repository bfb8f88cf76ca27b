//! The login phase of one connection (RFC 7143 §6.3, §11.12-13): a sans-IO state machine fed
//! with Login Request PDUs, producing Login Responses.
//!
//! Lookups that need the rest of the target (which targets exist, the session registry that
//! allocates TSIHs and reinstates sessions) go through [`LoginContext`].

use bytes::Bytes;

use super::chap::{AuthError, Authenticator, ChapSecrets};
use super::params::{NegotiationError, Negotiator, Params, SessionKind, TargetLimits};
use crate::pdu::{LoginRequest, LoginResponse, Pdu, login_status, stage, text};

/// RFC 7143 defines protocol version 0x00 only.
pub const ISCSI_VERSION: u8 = 0x00;

/// What a login needs from the target it runs in.
pub trait LoginContext {
    /// The alias of a target reachable through this portal group, if it exists.
    fn target_alias(&self, target_name: &str) -> Option<Option<String>>;
    /// Whether the session identified by `tsih` exists (used when a connection is added).
    fn session_exists(&self, tsih: u16) -> bool;
    /// Allocates a TSIH for the completed login, reinstating any older session with the same
    /// initiator, ISID and target. Fails with a login status class and detail.
    fn register_session(&mut self, outcome: &LoginOutcome) -> Result<u16, (u8, u8)>;
    /// This portal group's tag.
    fn portal_group_tag(&self) -> u16;
    /// Whether `initiator` may log in to `target` (None: a discovery session) over this
    /// connection, and what it must prove.
    fn authorize(&self, initiator: &str, target: Option<&str>) -> Authorization;
}

/// What the target's access rules say of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub allowed: bool,
    /// CHAP secrets the initiator must prove it knows; None: no authentication.
    pub chap: Option<ChapSecrets>,
}

/// Fills a buffer with unpredictable bytes (CHAP identifiers and challenges).
pub type RandomSource = Box<dyn FnMut(&mut [u8]) + Send>;

/// The operating system's CSPRNG.
pub fn os_random() -> RandomSource {
    Box::new(|buf: &mut [u8]| getrandom::fill(buf).expect("the OS random source failed"))
}

/// The result of a successful login, handed to the full-feature phase.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub kind: SessionKind,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub isid: u64,
    pub tsih: u16,
    pub cid: u16,
    pub params: Params,
    /// The first CmdSN the full-feature phase expects.
    pub exp_cmd_sn: u32,
    /// The StatSN of the next response on this connection.
    pub stat_sn: u32,
}

/// What the driver does after feeding a request.
#[derive(Debug)]
pub enum Step {
    /// Send this response and keep reading login requests.
    Reply(Pdu),
    /// Send this response; the connection is now in full-feature phase.
    Complete(Pdu, Box<LoginOutcome>),
    /// Send this response and close the connection.
    Fail(Pdu),
}

/// Login state of one connection.
pub struct Login {
    neg: Negotiator,
    queue_depth: u32,
    first: Option<LoginRequest>,
    stage: u8,
    text_in: text::TextBuffer,
    /// Remaining segments of a response too long for one PDU (sent with the C bit).
    text_out: Vec<Bytes>,
    stat_sn: u32,
    kind: Option<SessionKind>,
    /// Who logs in to what, as checked when the first complete request identified them: keys
    /// sent again later must not change them (a login checked for one target must not end on
    /// another).
    identity: Option<[Option<String>; 3]>,
    target_alias: Option<String>,
    sent_first_response: bool,
    /// What the initiator must prove (from [`LoginContext::authorize`]).
    chap: Option<ChapSecrets>,
    auth: Authenticator,
    random: RandomSource,
    /// The security stage goes on: this response must not transit.
    holding: bool,
}

impl Login {
    pub fn new(limits: TargetLimits, queue_depth: u32) -> Self {
        Login {
            neg: Negotiator::new(limits),
            queue_depth,
            first: None,
            stage: stage::SECURITY,
            text_in: text::TextBuffer::default(),
            text_out: Vec::new(),
            stat_sn: 0,
            kind: None,
            target_alias: None,
            identity: None,
            sent_first_response: false,
            chap: None,
            auth: Authenticator::default(),
            random: os_random(),
            holding: false,
        }
    }

    /// Replaces the random source (tests).
    pub fn with_random(mut self, random: RandomSource) -> Login {
        self.random = random;
        self
    }

    /// The data segment bound for incoming login PDUs (RFC default, not yet negotiated).
    pub fn data_segment_len_max() -> u32 {
        8192
    }

    pub fn on_request(&mut self, req: &LoginRequest, data: &[u8], ctx: &mut dyn LoginContext) -> Step {
        match self.step(req, data, ctx) {
            Ok(step) => step,
            Err((class_detail, why)) => {
                // Names as Debug: whatever the initiator sent is escaped (no forged log lines).
                let initiator = self.neg.keys.initiator_name.as_deref().unwrap_or("");
                tracing::info!(status = ?class_detail, ?initiator, reason = ?why, "login failed");
                Step::Fail(self.response(req, class_detail, false, Bytes::new()))
            }
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        ctx: &mut dyn LoginContext,
    ) -> Result<Step, ((u8, u8), String)> {
        let initiator_error = |why: &str| (login_status::INITIATOR_ERROR, why.to_string());
        let first = match self.first {
            None => {
                if req.version_min > ISCSI_VERSION {
                    return Err((login_status::UNSUPPORTED_VERSION, format!("version-min {}", req.version_min)));
                }
                self.stat_sn = req.exp_stat_sn;
                self.first = Some(*req);
                self.stage = req.csg;
                *req
            }
            Some(first) => first,
        };
        if req.isid != first.isid || req.tsih != first.tsih || req.cid != first.cid {
            return Err(initiator_error("ISID, TSIH or CID changed during login"));
        }
        if req.csg == 2 || req.csg == stage::FULL_FEATURE || req.csg < self.stage {
            return Err(initiator_error("invalid current stage"));
        }
        if req.transit && (req.nsg == 2 || req.nsg <= req.csg) {
            return Err(initiator_error("invalid next stage"));
        }
        if req.transit && req.cont {
            return Err(initiator_error("T and C both set"));
        }
        self.stage = req.csg;

        // Continue a long response of ours: the initiator acknowledges each part with an empty request.
        if !self.text_out.is_empty() {
            let segment = self.text_out.remove(0);
            let more = !self.text_out.is_empty();
            // The request acknowledging the last part may be the one that transits: then this
            // part is the final response, with the session behind it (and its TSIH).
            if !more && req.transit && req.nsg == stage::FULL_FEATURE && !self.holding {
                return self.complete(req, segment, ctx);
            }
            return Ok(Step::Reply(self.response(req, login_status::SUCCESS, more, segment)));
        }

        self.text_in.push(data).map_err(|e| initiator_error(&e.to_string()))?;
        if req.cont {
            return Ok(Step::Reply(self.response(req, login_status::SUCCESS, false, Bytes::new())));
        }
        let offers = self.text_in.finish().map_err(|e| initiator_error(&e.to_string()))?;
        let security = req.csg == stage::SECURITY;
        let (auth_offers, offers): (Vec<_>, Vec<_>) =
            offers.into_iter().partition(|(k, _)| k == "AuthMethod" || k.starts_with("CHAP_"));
        if !security && !auth_offers.is_empty() {
            return Err(initiator_error("authentication keys outside the security stage"));
        }

        let mut reply = match self.neg.respond(&offers) {
            Ok(reply) => reply,
            Err(NegotiationError::InitiatorError(why)) => return Err(initiator_error(&why)),
        };
        if self.kind.is_none() {
            self.identify(req, ctx)?;
        }
        if self.identity.as_ref() != Some(&self.declared_identity()) {
            return Err(initiator_error("InitiatorName, TargetName or SessionType changed during login"));
        }
        if security {
            let answer = self.auth.step(&auth_offers, self.chap.as_ref(), &mut *self.random);
            reply.extend(answer.map_err(|e| match e {
                AuthError::Initiator(why) => initiator_error(&why),
                AuthError::Failed(why) => (login_status::AUTHENTICATION_FAILURE, why),
            })?);
        } else if self.chap.is_some() && !self.auth.done() {
            return Err((
                login_status::AUTHENTICATION_FAILURE,
                "CHAP is required: the security stage was skipped".into(),
            ));
        }
        self.holding = security && !self.auth.done();
        if !self.sent_first_response && self.kind == Some(SessionKind::Normal) {
            reply.push(("TargetPortalGroupTag".into(), ctx.portal_group_tag().to_string()));
            if let Some(alias) = &self.target_alias {
                reply.push(("TargetAlias".into(), alias.clone()));
            }
        }
        if req.csg == stage::OPERATIONAL {
            reply.extend(self.neg.declarations());
        }
        self.sent_first_response = true;

        let body = text::encode(&reply);
        let mut segments = text::segments(&body, Login::data_segment_len_max() as usize);
        let segment = segments.remove(0);
        self.text_out = segments;
        if !self.text_out.is_empty() {
            return Ok(Step::Reply(self.response(req, login_status::SUCCESS, true, segment)));
        }
        if req.transit && req.nsg == stage::FULL_FEATURE && !self.holding {
            return self.complete(req, segment, ctx);
        }
        Ok(Step::Reply(self.response(req, login_status::SUCCESS, false, segment)))
    }

    /// InitiatorName, TargetName and SessionType as declared so far.
    fn declared_identity(&self) -> [Option<String>; 3] {
        let keys = &self.neg.keys;
        [keys.initiator_name.clone(), keys.target_name.clone(), keys.session_type.clone()]
    }

    /// Checks the declarative keys of the first complete request.
    fn identify(&mut self, req: &LoginRequest, ctx: &mut dyn LoginContext) -> Result<(), ((u8, u8), String)> {
        let keys = &self.neg.keys;
        if keys.initiator_name.as_deref().is_none_or(str::is_empty) {
            return Err((login_status::MISSING_PARAMETER, "InitiatorName missing".into()));
        }
        // No iSCSI name holds a control character (RFC 3722); one in a name would only serve
        // to forge lines in logs and listings.
        let names = [&keys.initiator_name, &keys.target_name];
        if names.iter().filter_map(|n| n.as_deref()).any(|n| n.chars().any(char::is_control)) {
            return Err((login_status::INITIATOR_ERROR, "a name holds a control character".into()));
        }
        let kind = match keys.session_type.as_deref() {
            None | Some("Normal") => SessionKind::Normal,
            Some("Discovery") => SessionKind::Discovery,
            Some(other) => {
                return Err((login_status::SESSION_TYPE_NOT_SUPPORTED, format!("SessionType={other}")));
            }
        };
        if kind == SessionKind::Normal {
            let Some(name) = keys.target_name.clone() else {
                return Err((login_status::MISSING_PARAMETER, "TargetName missing".into()));
            };
            match ctx.target_alias(&name) {
                Some(alias) => self.target_alias = alias,
                None => return Err((login_status::TARGET_NOT_FOUND, format!("no target {name}"))),
            }
        }
        let initiator = keys.initiator_name.as_deref().unwrap_or_default();
        let target = keys.target_name.as_deref().filter(|_| kind == SessionKind::Normal);
        let authorization = ctx.authorize(initiator, target);
        if !authorization.allowed {
            let what = target.unwrap_or("discovery");
            return Err((login_status::AUTHORIZATION_FAILURE, format!("{initiator:?} may not log in to {what}")));
        }
        self.chap = authorization.chap;
        if req.tsih != 0 {
            // Adding a connection to an existing session: MaxConnections is 1.
            return Err(if ctx.session_exists(req.tsih) {
                (login_status::TOO_MANY_CONNECTIONS, "MaxConnections=1".into())
            } else {
                (login_status::SESSION_DOES_NOT_EXIST, format!("no session with TSIH {}", req.tsih))
            });
        }
        self.kind = Some(kind);
        self.identity = Some(self.declared_identity());
        self.neg.set_session_kind(kind);
        Ok(())
    }

    fn complete(
        &mut self,
        req: &LoginRequest,
        segment: Bytes,
        ctx: &mut dyn LoginContext,
    ) -> Result<Step, ((u8, u8), String)> {
        let first = self.first.expect("first request seen");
        let mut params = self.neg.params.clone();
        if !self.neg.has_declared() {
            // We never declared our MaxRecvDataSegmentLength: the RFC default binds us.
            params.target_max_recv_data_segment_len = Login::data_segment_len_max();
        }
        let keys = &self.neg.keys;
        let mut outcome = LoginOutcome {
            kind: self.kind.expect("identified"),
            initiator_name: keys.initiator_name.clone().unwrap_or_default(),
            initiator_alias: keys.initiator_alias.clone(),
            target_name: keys.target_name.clone(),
            isid: first.isid,
            tsih: 0,
            cid: first.cid,
            params,
            exp_cmd_sn: req.cmd_sn,
            stat_sn: 0,
        };
        let tsih = ctx.register_session(&outcome).map_err(|status| (status, "session not registered".to_string()))?;
        outcome.tsih = tsih;
        let mut pdu = self.response(req, login_status::SUCCESS, false, segment);
        if let crate::pdu::Bhs::LoginResponse(r) = &mut pdu.bhs {
            r.tsih = tsih;
            r.transit = true;
            r.nsg = stage::FULL_FEATURE;
        }
        outcome.stat_sn = self.stat_sn;
        Ok(Step::Complete(pdu, Box::new(outcome)))
    }

    fn response(&mut self, req: &LoginRequest, status: (u8, u8), cont: bool, data: Bytes) -> Pdu {
        let success = status == login_status::SUCCESS;
        let transit = success && req.transit && !cont && !self.holding;
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        if transit {
            // The next stage has begun: a request back in the one it left is an initiator error.
            self.stage = req.nsg;
        }
        let exp_cmd_sn = req.cmd_sn;
        Pdu::with_data(
            LoginResponse {
                transit,
                cont,
                csg: req.csg,
                nsg: if transit { req.nsg } else { 0 },
                version_max: ISCSI_VERSION,
                version_active: ISCSI_VERSION,
                isid: req.isid,
                tsih: 0,
                itt: req.itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn: exp_cmd_sn.wrapping_add(if success { self.queue_depth.max(1) - 1 } else { 0 }),
                status_class: status.0,
                status_detail: status.1,
            },
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Bhs;

    #[derive(Default)]
    struct Ctx {
        registered: Vec<LoginOutcome>,
        /// CHAP required of everyone.
        chap: Option<ChapSecrets>,
        /// Initiators the ACL refuses.
        denied: Vec<String>,
    }

    impl LoginContext for Ctx {
        fn target_alias(&self, name: &str) -> Option<Option<String>> {
            (name == "iqn.2026-11.org.example:disk").then(|| Some("disk".to_string()))
        }
        fn session_exists(&self, tsih: u16) -> bool {
            tsih == 9
        }
        fn register_session(&mut self, outcome: &LoginOutcome) -> Result<u16, (u8, u8)> {
            self.registered.push(outcome.clone());
            Ok(42)
        }
        fn portal_group_tag(&self) -> u16 {
            1
        }
        fn authorize(&self, initiator: &str, _: Option<&str>) -> Authorization {
            Authorization { allowed: !self.denied.iter().any(|d| d == initiator), chap: self.chap.clone() }
        }
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            csg,
            nsg,
            isid: 0x23d000000001,
            itt: 1,
            cmd_sn: 5,
            exp_stat_sn: 100,
            ..Default::default()
        }
    }

    fn resp(pdu: &Pdu) -> (LoginResponse, Vec<(String, String)>) {
        let Bhs::LoginResponse(r) = pdu.bhs else { panic!("not a login response") };
        (r, text::parse(&pdu.data).unwrap())
    }

    const INITIATOR: &[u8] = b"InitiatorName=iqn.2026-11.org.example:host\0";

    #[test]
    fn two_stage_login_completes_with_tsih_and_params() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=None\0");
        let Step::Reply(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let (r, keys) = resp(&p);
        assert!(r.transit && r.nsg == 1 && r.status_class == 0 && r.stat_sn == 100);
        assert!(keys.contains(&("AuthMethod".into(), "None".into())));
        assert!(keys.contains(&("TargetPortalGroupTag".into(), "1".into())));
        assert!(keys.contains(&("TargetAlias".into(), "disk".into())));

        let step = login.on_request(&req(1, 3, true), b"MaxBurstLength=65536\0HeaderDigest=CRC32C,None\0", &mut ctx);
        let Step::Complete(p, outcome) = step else { panic!("{step:?}") };
        let (r, keys) = resp(&p);
        assert!(r.transit && r.nsg == 3 && r.tsih == 42 && r.stat_sn == 101);
        assert_eq!(r.max_cmd_sn, 5 + 31);
        assert!(keys.contains(&("MaxRecvDataSegmentLength".into(), "262144".into())));
        assert_eq!(outcome.params.max_burst_len, 65536);
        assert!(outcome.params.header_digest);
        assert_eq!(outcome.exp_cmd_sn, 5);
        assert_eq!(outcome.stat_sn, 102);
        assert_eq!(ctx.registered.len(), 1);
    }

    #[test]
    fn unknown_target_fails_with_target_not_found() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.nope\0");
        let Step::Fail(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let (r, _) = resp(&p);
        assert_eq!((r.status_class, r.status_detail), login_status::TARGET_NOT_FOUND);
    }

    #[test]
    fn a_name_with_a_control_character_is_refused() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let data =
            b"InitiatorName=iqn.2026-11.org.example:host\nforged log line\0TargetName=iqn.2026-11.org.example:disk\0";
        let Step::Fail(p) = login.on_request(&req(0, 1, true), data, &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::INITIATOR_ERROR);
        assert!(ctx.registered.is_empty());
    }

    #[test]
    fn missing_initiator_name_and_bad_version() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let Step::Fail(p) = login.on_request(&req(0, 1, true), b"SessionType=Discovery\0", &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::MISSING_PARAMETER);

        let mut login = Login::new(TargetLimits::default(), 32);
        let mut r = req(0, 1, true);
        r.version_min = 2;
        r.version_max = 2;
        let Step::Fail(p) = login.on_request(&r, INITIATOR, &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::UNSUPPORTED_VERSION);
    }

    #[test]
    fn chap_only_initiator_gets_authentication_failure() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"SessionType=Discovery\0AuthMethod=CHAP\0");
        let Step::Fail(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::AUTHENTICATION_FAILURE);
    }

    /// The target was checked when the first request named it: naming another one in the
    /// operational stage must not move the session there.
    #[test]
    fn a_target_name_sent_again_must_not_change() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=None\0");
        let Step::Reply(_) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let step = login.on_request(&req(1, 3, true), b"TargetName=iqn.2026-11.org.example:other\0", &mut ctx);
        let Step::Fail(p) = step else { panic!("{step:?}") };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::INITIATOR_ERROR);
        assert!(ctx.registered.is_empty());
        // The same name again is fine.
        let mut login = Login::new(TargetLimits::default(), 32);
        let Step::Reply(_) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let step = login.on_request(&req(1, 3, true), b"TargetName=iqn.2026-11.org.example:disk\0", &mut ctx);
        assert!(matches!(step, Step::Complete(..)), "{step:?}");
    }

    /// Once a transit is answered, the stage left is over (RFC 7143 §6.3).
    #[test]
    fn a_request_back_in_a_stage_already_left_fails() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=None\0");
        let Step::Reply(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        assert!(resp(&p).0.transit);
        let step = login.on_request(&req(0, 1, true), b"", &mut ctx);
        let Step::Fail(p) = step else { panic!("{step:?}") };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::INITIATOR_ERROR);
    }

    fn chap_ctx() -> Ctx {
        use super::super::chap::Secret;
        Ctx {
            chap: Some(ChapSecrets {
                user: "alice".into(),
                secret: Secret::new("alice-secret-123"),
                mutual: Some(("disk".into(), Secret::new("target-secret-456"))),
            }),
            ..Ctx::default()
        }
    }

    fn fixed_random() -> RandomSource {
        Box::new(|b: &mut [u8]| b.fill(9))
    }

    /// CHAP through the login: the security stage holds (T=0) until the initiator proved its
    /// secret, mutual CHAP answers, then the operational stage completes.
    #[test]
    fn a_chap_login_authenticates_both_ways_and_completes() {
        use super::super::chap::{Algorithm, Secret, decode_binary, encode_binary};
        let mut ctx = chap_ctx();
        let mut login = Login::new(TargetLimits::default(), 32).with_random(fixed_random());
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=CHAP,None\0");
        let Step::Reply(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let (r, keys) = resp(&p);
        assert!(!r.transit, "the security stage goes on");
        assert!(keys.contains(&("AuthMethod".into(), "CHAP".into())));
        let Step::Reply(p) = login.on_request(&req(0, 1, true), b"CHAP_A=7,5\0", &mut ctx) else { panic!() };
        let (r, keys) = resp(&p);
        assert!(!r.transit);
        let get = |k: &str| keys.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("CHAP_A"), "7");
        let (id, challenge) = (get("CHAP_I").parse::<u8>().unwrap(), decode_binary(&get("CHAP_C")).unwrap());
        let answer = encode_binary(&Algorithm::Sha256.response(id, &Secret::new("alice-secret-123"), &challenge));
        let text = format!("CHAP_N=alice\0CHAP_R={answer}\0CHAP_I=4\0CHAP_C=0x0a0b0c0d0e0f\0");
        let Step::Reply(p) = login.on_request(&req(0, 1, true), text.as_bytes(), &mut ctx) else { panic!() };
        let (r, keys) = resp(&p);
        assert!(r.transit && r.nsg == 1, "authenticated: on to the operational stage");
        let target_proof = Algorithm::Sha256.response(4, &Secret::new("target-secret-456"), &[10, 11, 12, 13, 14, 15]);
        assert!(keys.contains(&("CHAP_N".into(), "disk".into())));
        assert!(keys.contains(&("CHAP_R".into(), encode_binary(&target_proof))));
        let step = login.on_request(&req(1, 3, true), b"", &mut ctx);
        assert!(matches!(step, Step::Complete(..)), "{step:?}");
    }

    #[test]
    fn chap_failures_and_refusals_have_their_statuses() {
        let status = |p: &Pdu| (resp(p).0.status_class, resp(p).0.status_detail);
        // A wrong secret.
        let mut ctx = chap_ctx();
        let mut login = Login::new(TargetLimits::default(), 32).with_random(fixed_random());
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=CHAP\0");
        let Step::Reply(_) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        let Step::Reply(_) = login.on_request(&req(0, 1, true), b"CHAP_A=5\0", &mut ctx) else { panic!() };
        let step = login.on_request(&req(0, 1, true), b"CHAP_N=alice\0CHAP_R=0x00112233\0", &mut ctx);
        let Step::Fail(p) = step else { panic!("{step:?}") };
        assert_eq!(status(&p), login_status::AUTHENTICATION_FAILURE);
        // Skipping the security stage when CHAP is required.
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0");
        let Step::Fail(p) = login.on_request(&req(1, 3, true), &data, &mut ctx) else { panic!() };
        assert_eq!(status(&p), login_status::AUTHENTICATION_FAILURE);
        // AuthMethod=None only, when CHAP is required.
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0AuthMethod=None\0");
        let Step::Fail(p) = login.on_request(&req(0, 1, true), &data, &mut ctx) else { panic!() };
        assert_eq!(status(&p), login_status::AUTHENTICATION_FAILURE);
        // An initiator the ACL refuses.
        let mut ctx = Ctx { denied: vec!["iqn.2026-11.org.example:host".into()], ..Ctx::default() };
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0");
        let Step::Fail(p) = login.on_request(&req(1, 3, true), &data, &mut ctx) else { panic!() };
        assert_eq!(status(&p), login_status::AUTHORIZATION_FAILURE);
        assert!(ctx.registered.is_empty());
    }

    #[test]
    fn continued_text_is_gathered_across_pdus() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut r = req(1, 3, false);
        r.cont = true;
        let Step::Reply(p) = login.on_request(&r, b"InitiatorName=iqn.2026-11.org.exa", &mut ctx) else { panic!() };
        assert!(p.data.is_empty() && !resp(&p).0.transit);
        let step = login.on_request(&req(1, 3, true), b"mple:host\0SessionType=Discovery\0", &mut ctx);
        let Step::Complete(_, outcome) = step else { panic!("{step:?}") };
        assert_eq!(outcome.initiator_name, "iqn.2026-11.org.example:host");
        assert_eq!(outcome.kind, SessionKind::Discovery);
    }

    /// A response too long for one PDU goes out in parts, each acknowledged by an empty
    /// request; when the acknowledgement of the last part asks to transit to full-feature
    /// phase, that part is the final response: the session registered, its TSIH in it (not a
    /// transit to a session that does not exist, as a hostile client found).
    #[test]
    fn a_long_final_response_acknowledged_with_transit_completes_the_login() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0");
        for i in 0..300 {
            data.extend_from_slice(format!("X-unknown-key-{i}=1\0").as_bytes());
        }
        let mut step = login.on_request(&req(1, 3, true), &data, &mut ctx);
        let mut parts = 0;
        let (pdu, outcome) = loop {
            match step {
                Step::Reply(p) => {
                    let Bhs::LoginResponse(r) = p.bhs else { panic!("not a login response") };
                    assert!(r.cont && !r.transit && r.tsih == 0, "a part before the last: {r:?}");
                    parts += 1;
                    step = login.on_request(&req(1, 3, true), b"", &mut ctx);
                }
                Step::Complete(p, outcome) => break (p, outcome),
                other => panic!("{other:?}"),
            }
        };
        assert!(parts >= 1, "the response took more than one PDU");
        let Bhs::LoginResponse(r) = pdu.bhs else { panic!("not a login response") };
        assert!(r.transit && !r.cont && r.nsg == stage::FULL_FEATURE && r.tsih == 42, "{r:?}");
        assert_eq!((outcome.tsih, ctx.registered.len()), (42, 1));
    }

    #[test]
    fn adding_a_connection_is_refused() {
        let mut ctx = Ctx::default();
        let mut login = Login::new(TargetLimits::default(), 32);
        let mut r = req(1, 3, true);
        r.tsih = 9;
        let mut data = INITIATOR.to_vec();
        data.extend_from_slice(b"TargetName=iqn.2026-11.org.example:disk\0");
        let Step::Fail(p) = login.on_request(&r, &data, &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::TOO_MANY_CONNECTIONS);
        let mut login = Login::new(TargetLimits::default(), 32);
        r.tsih = 10;
        let Step::Fail(p) = login.on_request(&r, &data, &mut ctx) else { panic!() };
        assert_eq!((resp(&p).0.status_class, resp(&p).0.status_detail), login_status::SESSION_DOES_NOT_EXIST);
    }
}
