//! The keys of an encrypted volume. Each volume has its own random 256-bit data key, which
//! seals its objects (`sealing.rs`). The volume's metadata keeps that key wrapped
//! (XChaCha20-Poly1305) by a key-encryption key the operator holds: 32 bytes from a file or an
//! environment variable, or a passphrase stretched by Argon2id with a salt and parameters the
//! metadata records. The wrong key-encryption key fails to unwrap, and the volume refuses to
//! open with an error that says so, before any data is read.

use std::path::PathBuf;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// The one cipher: XChaCha20-Poly1305.
pub const CIPHER: &str = "xchacha20poly1305";
/// Plaintext bytes per sealed unit: the granularity of ranged reads of an encrypted object
/// (the CRC segment of a 4 MiB chunk). The unit is recorded in the metadata; the unit tests
/// seal in 512-byte units, so that their small chunks span several and every read crosses them.
#[cfg(not(test))]
pub const UNIT_BYTES: u64 = 64 << 10;
#[cfg(test)]
pub const UNIT_BYTES: u64 = 512;
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// The associated data of the wrapped key: what it is, so it opens nowhere else.
const WRAP_AAD: &[u8] = b"rtgt volume data key";
/// Argon2id's cost for a passphrase: OWASP's first recommendation (19 MiB, two passes).
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_ITERATIONS: u32 = 2;
const KDF_PARALLELISM: u32 = 1;
const SALT_BYTES: usize = 16;

/// How an encrypted volume is encrypted: recorded in its metadata (`rtgt-volume.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub cipher: String,
    /// Plaintext bytes per sealed unit.
    pub unit: u64,
    /// The data key sealed by the key-encryption key: base64 of nonce, ciphertext and tag.
    pub wrapped_key: String,
    /// How a passphrase becomes the key-encryption key; absent when the operator holds a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
}

/// Argon2id's salt and costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    /// Base64.
    pub salt: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// Where the key-encryption key comes from: a 256-bit key, or a passphrase for Argon2id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// 32 bytes: raw (a file of exactly 32 bytes), 64 hexadecimal digits or base64.
    Key(Held),
    Passphrase(Held),
}

/// Where a key or passphrase is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl KeySource {
    fn is_passphrase(&self) -> bool {
        matches!(self, KeySource::Passphrase(_))
    }

    fn describe(&self) -> String {
        let (what, held) = match self {
            KeySource::Key(held) => ("key", held),
            KeySource::Passphrase(held) => ("passphrase", held),
        };
        match held {
            Held::File(path) => format!("the {what} in {}", path.display()),
            Held::Env(name) => format!("the {what} in ${name}"),
        }
    }

    /// The bytes the source holds.
    fn read(&self) -> Result<Vec<u8>, String> {
        let (KeySource::Key(held) | KeySource::Passphrase(held)) = self;
        match held {
            Held::File(path) => std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
            Held::Env(name) => {
                std::env::var(name).map(String::into_bytes).map_err(|_| format!("${name} is not set (or not UTF-8)"))
            }
        }
    }
}

/// A volume's data key.
pub struct DataKey([u8; KEY_BYTES]);

impl DataKey {
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> DataKey {
        DataKey(bytes)
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0 = [0; KEY_BYTES];
    }
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("the OS random source failed: {e}"))?;
    Ok(b)
}

fn base64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A 32-byte key given as raw bytes (a file of exactly 32 bytes), 64 hexadecimal digits or
/// base64 (surrounding white space ignored).
fn parse_key(held: &[u8]) -> Option<[u8; KEY_BYTES]> {
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(held) {
        return Some(raw);
    }
    let text = std::str::from_utf8(held).ok()?.trim();
    let decoded = match text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => {
            (0..KEY_BYTES).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?
        }
        false => base64().decode(text).ok()?,
    };
    decoded.try_into().ok()
}

/// The key-encryption key from a source, through `kdf` for a passphrase.
fn key_encryption_key(source: &KeySource, kdf: Option<&Kdf>) -> Result<[u8; KEY_BYTES], String> {
    let held = source.read()?;
    let Some(kdf) = kdf else {
        return parse_key(&held)
            .ok_or_else(|| format!("{} is not a 256-bit key (32 bytes, 64 hex digits or base64)", source.describe()));
    };
    if held.is_empty() {
        return Err(format!("{} is empty", source.describe()));
    }
    let salt = base64().decode(&kdf.salt).map_err(|e| format!("unreadable KDF salt: {e}"))?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(KEY_BYTES))
        .map_err(|e| format!("KDF parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = [0u8; KEY_BYTES];
    argon.hash_password_into(&held, &salt, &mut kek).map_err(|e| format!("KDF: {e}"))?;
    Ok(kek)
}

/// A new salt and Argon2id's costs for a passphrase; nothing for a key.
fn new_kdf(source: &KeySource) -> Result<Option<Kdf>, String> {
    if !source.is_passphrase() {
        return Ok(None);
    }
    Ok(Some(Kdf {
        algorithm: "argon2id".into(),
        salt: base64().encode(random::<SALT_BYTES>()?),
        memory_kib: KDF_MEMORY_KIB,
        iterations: KDF_ITERATIONS,
        parallelism: KDF_PARALLELISM,
    }))
}

/// `data_key` sealed by `kek`: base64 of a fresh nonce, the ciphertext and its tag.
fn wrap(kek: &[u8; KEY_BYTES], data_key: &DataKey) -> Result<String, String> {
    let nonce = random::<NONCE_BYTES>()?;
    let wrapped = XChaCha20Poly1305::new(kek.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: data_key.as_bytes(), aad: WRAP_AAD })
        .map_err(|_| "cannot wrap the data key".to_string())?;
    Ok(base64().encode([&nonce[..], &wrapped].concat()))
}

/// A new data key for a volume, and how it is kept: wrapped by the key-encryption key from
/// `source` (through a new salt for a passphrase).
pub fn new_encryption(source: &KeySource) -> Result<(Encryption, DataKey), String> {
    let kdf = new_kdf(source)?;
    let kek = key_encryption_key(source, kdf.as_ref())?;
    let data_key = DataKey(random::<KEY_BYTES>()?);
    let wrapped_key = wrap(&kek, &data_key)?;
    Ok((Encryption { cipher: CIPHER.into(), unit: UNIT_BYTES, wrapped_key, kdf }, data_key))
}

/// The same data key wrapped by the key-encryption key from `new` instead (a new salt for a
/// passphrase): `old` must unwrap it.
pub fn rewrap(encryption: &Encryption, old: &KeySource, new: &KeySource) -> Result<Encryption, String> {
    let data_key = unwrap(encryption, old)?;
    let kdf = new_kdf(new)?;
    let kek = key_encryption_key(new, kdf.as_ref())?;
    Ok(Encryption { wrapped_key: wrap(&kek, &data_key)?, kdf, ..encryption.clone() })
}

/// The data key of an encrypted volume, unwrapped with the key-encryption key from `source`.
pub fn unwrap(encryption: &Encryption, source: &KeySource) -> Result<DataKey, String> {
    if encryption.cipher != CIPHER {
        return Err(format!("cipher {:?}, this rtgt knows {CIPHER}", encryption.cipher));
    }
    if encryption.unit == 0 || encryption.unit > 16 << 20 {
        return Err(format!("unit of {} bytes is out of range", encryption.unit));
    }
    match (&encryption.kdf, source.is_passphrase()) {
        (Some(_), false) => {
            return Err("its key is a passphrase: give it as one (encryption_passphrase_file or _env)".into());
        }
        (None, true) => return Err("its key is a 256-bit key, not a passphrase (encryption_key_file or _env)".into()),
        _ => {}
    }
    let kek = key_encryption_key(source, encryption.kdf.as_ref())?;
    let wrapped = base64().decode(&encryption.wrapped_key).map_err(|e| format!("unreadable wrapped key: {e}"))?;
    if wrapped.len() != NONCE_BYTES + KEY_BYTES + 16 {
        return Err(format!("the wrapped key is {} bytes", wrapped.len()));
    }
    let (nonce, sealed) = wrapped.split_at(NONCE_BYTES);
    let key = XChaCha20Poly1305::new((&kek).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: WRAP_AAD })
        .map_err(|_| format!("{} does not open this volume (a wrong key)", source.describe()))?;
    Ok(DataKey(key.try_into().expect("32 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> Held {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        Held::File(path)
    }

    #[test]
    fn a_key_in_any_of_its_forms_unwraps_what_it_wrapped_and_another_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [7u8; 32];
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64().encode(raw);
        let sources = [
            KeySource::Key(held(&dir, "raw", &raw)),
            KeySource::Key(held(&dir, "hex", format!("{hex}\n").as_bytes())),
            KeySource::Key(held(&dir, "b64", b64.as_bytes())),
        ];
        let (encryption, key) = new_encryption(&sources[0]).unwrap();
        assert_eq!((encryption.cipher.as_str(), encryption.unit, encryption.kdf.is_none()), (CIPHER, UNIT_BYTES, true));
        for source in &sources {
            assert_eq!(unwrap(&encryption, source).unwrap().as_bytes(), key.as_bytes(), "{source:?}");
        }
        let other = KeySource::Key(held(&dir, "other", &[8u8; 32]));
        assert!(unwrap(&encryption, &other).err().unwrap().contains("does not open this volume"));
        let short = KeySource::Key(held(&dir, "short", b"0123"));
        assert!(unwrap(&encryption, &short).err().unwrap().contains("not a 256-bit key"));
        let unset = KeySource::Key(Held::Env("RTGT_TEST_NEVER_SET".into()));
        assert!(unwrap(&encryption, &unset).err().unwrap().contains("is not set"));
        let passphrase = KeySource::Passphrase(held(&dir, "pass", b"correct horse"));
        assert!(unwrap(&encryption, &passphrase).err().unwrap().contains("not a passphrase"));
    }

    #[test]
    fn a_new_key_rewraps_the_same_data_key_and_the_old_one_no_longer_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = KeySource::Key(held(&dir, "old", &[1u8; 32]));
        let new = KeySource::Passphrase(held(&dir, "new", b"a new passphrase"));
        let (encryption, key) = new_encryption(&old).unwrap();
        assert!(rewrap(&encryption, &new, &old).err().unwrap().contains("is a 256-bit key"), "the old key first");
        let rewrapped = rewrap(&encryption, &old, &new).unwrap();
        assert_eq!(unwrap(&rewrapped, &new).unwrap().as_bytes(), key.as_bytes(), "the same data key");
        assert!(unwrap(&rewrapped, &old).is_err());
        assert_eq!(rewrapped.unit, encryption.unit);
    }

    #[test]
    fn a_passphrase_goes_through_argon2id_with_a_salt_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let passphrase = KeySource::Passphrase(held(&dir, "pass", b"correct horse"));
        let (encryption, key) = new_encryption(&passphrase).unwrap();
        let kdf = encryption.kdf.clone().expect("a KDF for a passphrase");
        assert_eq!(
            (kdf.algorithm.as_str(), kdf.memory_kib, kdf.iterations),
            ("argon2id", KDF_MEMORY_KIB, KDF_ITERATIONS)
        );
        assert_eq!(unwrap(&encryption, &passphrase).unwrap().as_bytes(), key.as_bytes());
        let wrong = KeySource::Passphrase(held(&dir, "wrong", b"battery staple"));
        assert!(unwrap(&encryption, &wrong).err().unwrap().contains("does not open this volume"));
        let (again, _) = new_encryption(&passphrase).unwrap();
        assert_ne!(again.kdf.unwrap().salt, kdf.salt, "each volume salts its own");
        let as_key = KeySource::Key(held(&dir, "key", &[7u8; 32]));
        assert!(unwrap(&encryption, &as_key).err().unwrap().contains("is a passphrase"));
    }
}
