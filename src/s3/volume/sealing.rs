//! Client-side encryption of an encrypted volume's data objects (chunks and logs): an object
//! store over the real one that seals what the volume puts and opens what it gets, so the rest
//! of the volume sees plaintext and the store sees only ciphertext.
//!
//! An object is sealed in units of [`Encryption::unit`](super::keys::Encryption) plaintext
//! bytes (the last one shorter), each stored as a fresh random 24-byte nonce, the
//! XChaCha20-Poly1305 ciphertext and its 16-byte tag. A unit's associated data is the object's
//! name within the volume, the unit's index and the object's plaintext length, so a unit moved
//! to another place or object, or an object cut short or extended, fails to open: a read of it
//! fails (a MEDIUM ERROR to the initiator), never returns wrong data. Ranged reads fetch and
//! open only the units they cover. Nonces are random (192 bits: no coordination, no reuse in
//! practice), drawn from the OS. The cipher is XChaCha20-Poly1305 built from HChaCha20 and
//! ring's ChaCha20-Poly1305 (checked against libsodium's XChaCha20-Poly1305 by a known answer).
//!
//! The plaintext length travels in the object's metadata ([`SEALED_LENGTH_METADATA`]) and the
//! volume's own metadata (the CRC32C of each plaintext segment) passes through unchanged. The
//! volume's metadata, lease and reservations objects are not sealed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::format::{CHUNKS_DIR, LOG_DIR};
use super::keys::DataKey;
use crate::s3::{Condition, DeleteResults, GetOutput, ListPage, ObjResult, ObjectError, ObjectMeta, ObjectStore};
use crate::storage::BoxFuture;

/// Object metadata of a sealed object: its plaintext length, in decimal.
pub const SEALED_LENGTH_METADATA: &str = "rtgt-sealed-length";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Stored bytes a unit costs beyond its plaintext.
pub const UNIT_OVERHEAD: u64 = (NONCE_BYTES + TAG_BYTES) as u64;

/// Where nonces come from: the OS's random source in production.
pub type NonceSource = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// The OS's random source.
pub fn os_nonces() -> NonceSource {
    Arc::new(|buf: &mut [u8]| getrandom::fill(buf).expect("the OS random source failed"))
}

/// Seals and opens the units of objects with one volume's data key.
pub struct Sealer {
    key: [u8; 32],
    unit: u64,
    nonces: NonceSource,
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.key = [0; 32];
    }
}

impl Sealer {
    pub fn new(key: &DataKey, unit: u64, nonces: NonceSource) -> Sealer {
        Sealer { key: *key.as_bytes(), unit, nonces }
    }

    /// XChaCha20-Poly1305 as draft-irtf-cfrg-xchacha builds it: ChaCha20-Poly1305 under the
    /// HChaCha20 subkey of the nonce's first 16 bytes, its nonce four zero bytes and the last 8.
    /// ring does the bulk work (its code is optimized whatever the build); the subkey is one
    /// ChaCha block per unit.
    fn unit_cipher(&self, nonce: &[u8]) -> (LessSafeKey, Nonce) {
        let subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(&self.key.into(), nonce[..16].into());
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a 32-byte key"));
        let mut inner = [0u8; 12];
        inner[4..].copy_from_slice(&nonce[16..NONCE_BYTES]);
        (key, Nonce::assume_unique_for_key(inner))
    }

    fn aad(name: &str, index: u64, plain_len: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(name.len() + 16);
        aad.extend_from_slice(name.as_bytes());
        aad.extend_from_slice(&index.to_be_bytes());
        aad.extend_from_slice(&plain_len.to_be_bytes());
        aad
    }

    /// The sealed form of a whole object named `name` (within its volume).
    pub fn seal(&self, name: &str, plain: &[u8]) -> Bytes {
        let plain_len = plain.len() as u64;
        let units = plain_len.div_ceil(self.unit);
        let mut out = BytesMut::with_capacity((plain_len + units * UNIT_OVERHEAD) as usize);
        for (index, piece) in plain.chunks(self.unit as usize).enumerate() {
            let mut nonce = [0u8; NONCE_BYTES];
            (self.nonces)(&mut nonce);
            let aad = Sealer::aad(name, index as u64, plain_len);
            let (key, inner) = self.unit_cipher(&nonce);
            out.extend_from_slice(&nonce);
            let at = out.len();
            out.extend_from_slice(piece);
            let tag = key
                .seal_in_place_separate_tag(inner, Aad::from(&aad), &mut out[at..])
                .expect("ChaCha20-Poly1305 seals any length we give it");
            out.extend_from_slice(tag.as_ref());
        }
        out.freeze()
    }

    /// The stored bytes holding the units that cover plaintext `range` (the end may lie past
    /// the object: stores answer what there is).
    pub fn stored_range(&self, range: &Range<u64>) -> Range<u64> {
        let stored_unit = self.unit + UNIT_OVERHEAD;
        let first = range.start / self.unit;
        let end = range.end.div_ceil(self.unit);
        first * stored_unit..end * stored_unit
    }

    /// The plaintext length of a sealed object of `stored` bytes (each unit holds at least
    /// one plaintext byte, so the count of units follows from the stored length).
    pub fn plain_len_of(&self, stored: u64) -> u64 {
        stored - stored.div_ceil(self.unit + UNIT_OVERHEAD) * UNIT_OVERHEAD
    }

    /// Opens the units stored in `stored`, the first of them unit `first`, of an object of
    /// `plain_len` plaintext bytes: their plaintext.
    pub fn open(&self, name: &str, stored: &[u8], first: u64, plain_len: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(stored.len());
        let mut at = 0usize;
        let mut index = first;
        while at < stored.len() {
            let unit_plain = self.unit.min(plain_len.saturating_sub(index * self.unit));
            let len = (unit_plain + UNIT_OVERHEAD) as usize;
            if unit_plain == 0 || at + len > stored.len() {
                return Err(format!("{name}: unit {index} is cut short or lies past the object's length"));
            }
            let (nonce, sealed) = stored[at..at + len].split_at(NONCE_BYTES);
            let aad = Sealer::aad(name, index, plain_len);
            let (key, inner) = self.unit_cipher(nonce);
            // Opened where it lands in the output, without a copy of its own.
            let start = out.len();
            out.extend_from_slice(sealed);
            let opened = key
                .open_in_place(inner, Aad::from(&aad), &mut out[start..])
                .map_err(|_| format!("{name}: unit {index} fails authentication (modified, moved or not ours)"))?
                .len();
            out.truncate(start + opened);
            at += len;
            index += 1;
        }
        Ok(out)
    }
}

/// An object store that seals the data objects of one volume.
pub struct SealedStore {
    inner: Arc<dyn ObjectStore>,
    /// Replaced by a crypto erase (with nothing sealed under the old one left to read).
    sealer: std::sync::RwLock<Arc<Sealer>>,
    /// The key prefixes ("" or "prefix/") of the volume and of the volumes it reads through
    /// to (a clone's parents, which share its data key): names are relative to them.
    volumes: Vec<String>,
}

impl SealedStore {
    /// A sealed store over the volumes whose key prefixes are `volumes`.
    pub fn over(inner: Arc<dyn ObjectStore>, volumes: Vec<String>, sealer: Sealer) -> SealedStore {
        SealedStore { inner, sealer: std::sync::RwLock::new(Arc::new(sealer)), volumes }
    }

    fn sealer(&self) -> Arc<Sealer> {
        self.sealer.read().expect("poisoned").clone()
    }

    /// Seals and opens with `sealer` from now on (a new data key: a crypto erase).
    pub fn replace_sealer(&self, sealer: Sealer) {
        *self.sealer.write().expect("poisoned") = Arc::new(sealer);
    }

    /// The name within its volume of a key to seal: chunks and logs.
    fn sealed_name<'a>(&self, key: &'a str) -> Option<&'a str> {
        let data = |name: &str| name.starts_with(CHUNKS_DIR) || name.starts_with(LOG_DIR);
        self.volumes.iter().filter_map(|v| key.strip_prefix(v.as_str())).find(|name| data(name))
    }

    /// The plaintext length a sealed object's metadata records; the metadata without it.
    fn plain_len(key: &str, meta: &mut ObjectMeta) -> ObjResult<u64> {
        let recorded = meta.metadata.remove(SEALED_LENGTH_METADATA).and_then(|v| v.parse().ok());
        recorded.ok_or_else(|| ObjectError::failed(format!("{key} is not sealed, in a volume that is encrypted")))
    }

    async fn get_sealed(&self, key: &str, name: &str, range: Option<Range<u64>>) -> ObjResult<GetOutput> {
        let sealer = self.sealer();
        let stored_range = range.as_ref().map(|r| sealer.stored_range(r));
        let mut out = self.inner.get(key, stored_range).await?;
        let plain_len = SealedStore::plain_len(key, &mut out.meta)?;
        out.meta.size = plain_len;
        let Some(range) = range else {
            let plain = sealer.open(name, &out.body, 0, plain_len).map_err(ObjectError::failed)?;
            if plain.len() as u64 != plain_len {
                return Err(ObjectError::failed(format!("{key}: {} of its {plain_len} bytes", plain.len())));
            }
            out.body = Bytes::from(plain);
            return Ok(out);
        };
        if range.start >= plain_len && !(range.start == 0 && plain_len == 0) {
            return Err(ObjectError::RangeNotSatisfiable);
        }
        let first = range.start / sealer.unit;
        let plain = sealer.open(name, &out.body, first, plain_len).map_err(ObjectError::failed)?;
        let from = (range.start - first * sealer.unit) as usize;
        let to = (range.end.min(plain_len) - first * sealer.unit) as usize;
        if to > plain.len() {
            return Err(ObjectError::failed(format!("{key}: fewer units than its length says")));
        }
        out.body = Bytes::from(plain).slice(from..to);
        Ok(out)
    }
}

impl ObjectStore for SealedStore {
    fn describe(&self) -> String {
        format!("{} (encrypted)", self.inner.describe())
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(async move {
            match self.sealed_name(&key) {
                Some(name) => self.get_sealed(&key, name, range).await,
                None => self.inner.get(&key, range).await,
            }
        })
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        mut metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let body = match self.sealed_name(key) {
            Some(name) => {
                metadata.insert(SEALED_LENGTH_METADATA.into(), body.len().to_string());
                self.sealer().seal(name, &body)
            }
            None => body,
        };
        self.inner.put(key, body, metadata, condition)
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        self.inner.delete(key)
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        self.inner.delete_many(keys)
    }

    /// Listed sizes are plaintext sizes, as the volume checks them.
    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let mut page = self.inner.list(&prefix, continuation).await?;
            let sealer = self.sealer();
            for listed in &mut page.objects {
                if self.sealed_name(&listed.key).is_some() {
                    listed.size = sealer.plain_len_of(listed.size);
                }
            }
            Ok(page)
        })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let key = key.to_string();
        Box::pin(async move {
            let mut meta = self.inner.head(&key).await?;
            if self.sealed_name(&key).is_some() {
                meta.size = SealedStore::plain_len(&key, &mut meta)?;
            }
            Ok(meta)
        })
    }
}

#[cfg(test)]
#[path = "sealing_tests.rs"]
mod tests;
