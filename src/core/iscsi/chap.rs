//! CHAP (RFC 7143 §12.1.3, RFC 1994) on the target side: the AuthMethod choice and the
//! CHAP_A / CHAP_I / CHAP_C / CHAP_N / CHAP_R exchange of the security stage, one-way or mutual,
//! with MD5, SHA-1, SHA-256 and SHA3-256 (CHAP_A 5, 6, 7, 8). Pure: the randomness for
//! identifiers and challenges is handed in.

use md5::Digest;
use subtle::ConstantTimeEq;

/// A CHAP secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Shortest and longest secret accepted (RFC 7143 §12.1.3: at least 96 bits).
pub const SECRET_LEN_MIN: usize = 12;
pub const SECRET_LEN_MAX: usize = 255;

/// What an initiator must prove, and what the target proves back when asked (mutual CHAP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    pub user: String,
    pub secret: Secret,
    /// The target's own name and secret, for initiators that authenticate the target.
    pub mutual: Option<(String, Secret)>,
}

/// The CHAP digests (IANA PPP authentication algorithm numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
    Sha3_256 = 8,
}

impl Algorithm {
    fn from_number(n: &str) -> Option<Algorithm> {
        match n.trim() {
            "5" => Some(Algorithm::Md5),
            "6" => Some(Algorithm::Sha1),
            "7" => Some(Algorithm::Sha256),
            "8" => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    /// The CHAP response: digest of identifier, secret, challenge.
    pub fn response(self, id: u8, secret: &Secret, challenge: &[u8]) -> Vec<u8> {
        fn digest<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => digest::<md5::Md5>(id, &secret.0, challenge),
            Algorithm::Sha1 => digest::<sha1::Sha1>(id, &secret.0, challenge),
            Algorithm::Sha256 => digest::<sha2::Sha256>(id, &secret.0, challenge),
            Algorithm::Sha3_256 => digest::<sha3::Sha3_256>(id, &secret.0, challenge),
        }
    }
}

/// Bytes of the challenges we send.
pub const CHALLENGE_LEN: usize = 32;
/// Longest challenge accepted from an initiator (mutual CHAP).
const INITIATOR_CHALLENGE_MAX: usize = 1024;

/// Decodes a CHAP binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn decode_binary(value: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let (prefix, body) = value.split_at_checked(2)?;
    match prefix {
        "0x" | "0X" => {
            let body = if body.len() % 2 == 1 { format!("0{body}") } else { body.to_string() };
            (0..body.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&body[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
                .filter(|v| !v.is_empty())
        }
        "0b" | "0B" => base64::engine::general_purpose::STANDARD.decode(body).ok().filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// Encodes bytes as a `0x` hex CHAP value.
pub fn encode_binary(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Why the security stage ends the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A malformed or out-of-order key (status 0x0200).
    Initiator(String),
    /// Authentication failed (status 0x0201).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for AuthMethod.
    Start,
    /// CHAP chosen: waiting for CHAP_A.
    Algorithm,
    /// Challenge sent: waiting for CHAP_N and CHAP_R.
    Response {
        algorithm: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// The target's side of the security stage of one login.
#[derive(Debug)]
pub struct Authenticator {
    state: State,
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator { state: State::Start }
    }
}

fn find<'a>(offers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    offers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Authenticator {
    /// Whether the initiator has authenticated (or no authentication was needed).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Answers the AuthMethod and CHAP keys of one request. `required`: the secrets an
    /// initiator must prove it knows; None lets AuthMethod=None through.
    pub fn step(
        &mut self,
        offers: &[(String, String)],
        required: Option<&ChapSecrets>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Vec<(String, String)>, AuthError> {
        let reply = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => {
                let Some(methods) = find(offers, "AuthMethod") else {
                    self.state = State::Start;
                    return match offers.is_empty() {
                        true => Ok(Vec::new()),
                        false => Err(AuthError::Initiator("CHAP keys before AuthMethod".into())),
                    };
                };
                let offered = |m: &str| methods.split(',').any(|v| v.trim() == m);
                match required {
                    Some(_) if offered("CHAP") => {
                        self.state = State::Algorithm;
                        Ok(reply(&[("AuthMethod", "CHAP".into())]))
                    }
                    Some(_) => Err(AuthError::Failed(format!("CHAP is required; offered AuthMethod={methods}"))),
                    None if offered("None") => Ok(reply(&[("AuthMethod", "None".into())])),
                    None => Err(AuthError::Failed(format!("no CHAP secret is set; offered AuthMethod={methods}"))),
                }
            }
            State::Algorithm => {
                let Some(list) = find(offers, "CHAP_A") else {
                    self.state = State::Algorithm;
                    return Ok(Vec::new());
                };
                // The initiator lists in its order of preference.
                let Some(algorithm) = list.split(',').find_map(Algorithm::from_number) else {
                    return Err(AuthError::Failed(format!("no supported CHAP algorithm in CHAP_A={list}")));
                };
                let mut id = [0u8; 1];
                random(&mut id);
                let mut challenge = vec![0u8; CHALLENGE_LEN];
                random(&mut challenge);
                let out = reply(&[
                    ("CHAP_A", (algorithm as u8).to_string()),
                    ("CHAP_I", id[0].to_string()),
                    ("CHAP_C", encode_binary(&challenge)),
                ]);
                self.state = State::Response { algorithm, id: id[0], challenge };
                Ok(out)
            }
            State::Response { algorithm, id, challenge } => {
                let secrets = required.expect("CHAP is only chosen with secrets");
                let (Some(name), Some(response)) = (find(offers, "CHAP_N"), find(offers, "CHAP_R")) else {
                    return Err(AuthError::Initiator("CHAP_N and CHAP_R expected".into()));
                };
                let response = decode_binary(response).ok_or(AuthError::Initiator("CHAP_R is not binary".into()))?;
                let expected = algorithm.response(id, &secrets.secret, &challenge);
                let user_ok = name.as_bytes().ct_eq(secrets.user.as_bytes());
                let response_ok = response.ct_eq(&expected);
                if !bool::from(user_ok & response_ok) {
                    return Err(AuthError::Failed(format!("CHAP failed for user {name:?}")));
                }
                self.mutual(offers, secrets, algorithm, &challenge)
            }
            State::Done => match offers.is_empty() {
                true => Ok(Vec::new()),
                false => Err(AuthError::Initiator("authentication keys after authentication".into())),
            },
        }
    }

    /// The target's proof when the initiator asks for it (CHAP_I and CHAP_C).
    fn mutual(
        &mut self,
        offers: &[(String, String)],
        secrets: &ChapSecrets,
        algorithm: Algorithm,
        ours: &[u8],
    ) -> Result<Vec<(String, String)>, AuthError> {
        let (id, challenge) = match (find(offers, "CHAP_I"), find(offers, "CHAP_C")) {
            (None, None) => return Ok(Vec::new()),
            (Some(id), Some(challenge)) => (id, challenge),
            _ => return Err(AuthError::Initiator("CHAP_I and CHAP_C go together".into())),
        };
        let id: u8 = id.trim().parse().map_err(|_| AuthError::Initiator(format!("CHAP_I={id}")))?;
        let challenge = decode_binary(challenge)
            .filter(|c| c.len() <= INITIATOR_CHALLENGE_MAX)
            .ok_or(AuthError::Initiator("CHAP_C is not a valid challenge".into()))?;
        // Our own challenge sent back would make us answer for the initiator (a reflection).
        if challenge == ours {
            return Err(AuthError::Failed("the initiator's challenge repeats the target's".into()));
        }
        let Some((name, secret)) = &secrets.mutual else {
            return Err(AuthError::Failed("the initiator asks for mutual CHAP, which is not set up".into()));
        };
        let response = algorithm.response(id, secret, &challenge);
        Ok(vec![("CHAP_N".into(), name.clone()), ("CHAP_R".into(), encode_binary(&response))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn value<'a>(reply: &'a [(String, String)], key: &str) -> &'a str {
        find(reply, key).unwrap_or_else(|| panic!("{key} missing in {reply:?}"))
    }

    fn secrets(mutual: bool) -> ChapSecrets {
        ChapSecrets {
            user: "alice".into(),
            secret: Secret::new("alice-secret-123"),
            mutual: mutual.then(|| ("target".to_string(), Secret::new("target-secret-456"))),
        }
    }

    /// Known answers: identifier 1, secret "secret", challenge "challenge", digested by
    /// Python's hashlib (md5, sha1, sha256, sha3_256) and coreutils' md5sum.
    #[test]
    fn responses_match_reference_digests() {
        let s = Secret::new("secret");
        let hex = |v: Vec<u8>| encode_binary(&v);
        let answers = [
            (Algorithm::Md5, "0x46e47770030e2b4e26a0db72a7efec00"),
            (Algorithm::Sha1, "0x011f25d29fe1baaced569c0d7e4878e40ddb7d7e"),
            (Algorithm::Sha256, "0x2dfa0526f4764864b7c3c5bc6596bcead3d8dbd984f4fc1d9f330299f0beced4"),
            (Algorithm::Sha3_256, "0x9444877c4dff778ed2add0f102dcd561e11944e7e948ee1b89508451a9e680ad"),
        ];
        for (algorithm, want) in answers {
            assert_eq!(hex(algorithm.response(1, &s, b"challenge")), want, "{algorithm:?}");
        }
    }

    #[test]
    fn binary_values_decode_hex_and_base64() {
        assert_eq!(decode_binary("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAAE="), Some(vec![0, 1]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("é"), None);
    }

    fn run(
        required: Option<&ChapSecrets>,
        algorithms: &str,
        mutual: Option<&[u8]>,
        wrong: bool,
    ) -> Result<(), AuthError> {
        let mut a = Authenticator::default();
        let mut counter = 0u8;
        let mut random = |buf: &mut [u8]| {
            for b in buf {
                counter = counter.wrapping_add(7);
                *b = counter;
            }
        };
        let r = a.step(&offers(&[("AuthMethod", "CHAP,None")]), required, &mut random)?;
        assert_eq!(value(&r, "AuthMethod"), "CHAP");
        let r = a.step(&offers(&[("CHAP_A", algorithms)]), required, &mut random)?;
        let algorithm = Algorithm::from_number(value(&r, "CHAP_A")).unwrap();
        let id: u8 = value(&r, "CHAP_I").parse().unwrap();
        let challenge = decode_binary(value(&r, "CHAP_C")).unwrap();
        assert_eq!(challenge.len(), CHALLENGE_LEN);
        let s = required.unwrap();
        let secret = if wrong { Secret::new("not-the-secret!") } else { s.secret.clone() };
        let mut answer = vec![
            ("CHAP_N".to_string(), s.user.clone()),
            ("CHAP_R".to_string(), encode_binary(&algorithm.response(id, &secret, &challenge))),
        ];
        if let Some(c) = mutual {
            answer.push(("CHAP_I".into(), "77".into()));
            answer.push(("CHAP_C".into(), encode_binary(c)));
        }
        let r = a.step(&answer, required, &mut random)?;
        if let (Some(c), Some((name, secret))) = (mutual, &s.mutual) {
            assert_eq!(value(&r, "CHAP_N"), name);
            assert_eq!(decode_binary(value(&r, "CHAP_R")).unwrap(), algorithm.response(77, secret, c));
        }
        assert!(a.done());
        Ok(())
    }

    #[test]
    fn one_way_and_mutual_chap_with_every_digest() {
        for algorithms in ["5", "6", "7", "8", "8,7,6,5", "99,7"] {
            run(Some(&secrets(false)), algorithms, None, false).unwrap();
            run(Some(&secrets(true)), algorithms, Some(b"initiator-challenge-0123456789"), false).unwrap();
        }
    }

    #[test]
    fn wrong_secrets_names_and_setups_fail() {
        assert!(matches!(run(Some(&secrets(false)), "5", None, true), Err(AuthError::Failed(_))));
        assert!(matches!(run(Some(&secrets(false)), "99", None, false), Err(AuthError::Failed(_))));
        // Mutual asked of a target without its own secret.
        assert!(matches!(run(Some(&secrets(false)), "5", Some(b"c"), false), Err(AuthError::Failed(_))));
        // A reflected challenge.
        let mut a = Authenticator::default();
        let mut zero = |buf: &mut [u8]| buf.fill(0);
        let s = secrets(true);
        a.step(&offers(&[("AuthMethod", "CHAP")]), Some(&s), &mut zero).unwrap();
        let r = a.step(&offers(&[("CHAP_A", "5")]), Some(&s), &mut zero).unwrap();
        let c = value(&r, "CHAP_C").to_string();
        let good = encode_binary(&Algorithm::Md5.response(0, &s.secret, &[0; CHALLENGE_LEN]));
        let r = a.step(
            &offers(&[("CHAP_N", "alice"), ("CHAP_R", &good), ("CHAP_I", "0"), ("CHAP_C", &c)]),
            Some(&s),
            &mut zero,
        );
        assert!(matches!(r, Err(AuthError::Failed(m)) if m.contains("repeats")));
        // Another user's name with the right digest.
        let mut a = Authenticator::default();
        a.step(&offers(&[("AuthMethod", "CHAP")]), Some(&s), &mut zero).unwrap();
        a.step(&offers(&[("CHAP_A", "5")]), Some(&s), &mut zero).unwrap();
        let r = a.step(&offers(&[("CHAP_N", "mallory"), ("CHAP_R", &good)]), Some(&s), &mut zero);
        assert!(matches!(r, Err(AuthError::Failed(_))));
    }

    #[test]
    fn auth_method_choice() {
        let mut none = |_: &mut [u8]| {};
        let s = secrets(false);
        let mut a = Authenticator::default();
        assert_eq!(a.step(&offers(&[("AuthMethod", "CHAP,None")]), None, &mut none).unwrap()[0].1, "None");
        assert!(a.done());
        let mut a = Authenticator::default();
        assert!(matches!(a.step(&offers(&[("AuthMethod", "None")]), Some(&s), &mut none), Err(AuthError::Failed(_))));
        let mut a = Authenticator::default();
        assert!(matches!(a.step(&offers(&[("AuthMethod", "CHAP")]), None, &mut none), Err(AuthError::Failed(_))));
        let mut a = Authenticator::default();
        assert!(matches!(a.step(&offers(&[("CHAP_A", "5")]), Some(&s), &mut none), Err(AuthError::Initiator(_))));
    }

    #[test]
    fn secrets_are_never_printed() {
        assert!(!format!("{:?}", secrets(true)).contains("secret-"));
    }
}
