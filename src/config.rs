//! The configuration file (TOML): server settings, portal groups, targets and their LUNs.
//! Validation reports every problem with the path of the field it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::iscsi::conn::ConnConfig;
use crate::iscsi::params::{SEGMENT_LEN_MAX, SEGMENT_LEN_MIN, TargetLimits};
use crate::s3::volume::keys::{Held, KeySource};
use crate::server::supervisor::LunOpenError;
use crate::server::{DEFAULT_BUSY_POLL_US, Settings};
use crate::storage::file::FileOptions;

mod backend;
mod build;
pub use backend::Backend;

pub use build::{ATOMIC_WRITES_DIR, BuildContext};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, rename = "portal_group")]
    pub portal_groups: Vec<PortalGroupConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// The embedded object store (a local directory, crash-safe) for LUNs with
    /// `endpoint = "embedded"`, also served over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_s3: Option<EmbeddedS3Config>,
    /// The management API.
    #[serde(default, skip_serializing_if = "ApiConfig::is_default")]
    pub api: ApiConfig,
    /// CHAP required of discovery sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_chap: Option<ChapConfig>,
}

/// CHAP secrets: what initiators must prove, and what the target proves back when asked.
/// A secret is written as is, or as `env:NAME` (an environment variable) or `file:PATH` (a
/// file's contents, without a trailing newline); 12 to 255 bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig").field("user", &self.user).field("mutual_user", &self.mutual_user).finish()
    }
}

/// A secret as configured: written as is, or `env:NAME` (an environment variable) or
/// `file:PATH` (a file's contents without a trailing newline).
pub fn secret_bytes(what: &str, spec: &str) -> Result<Vec<u8>, String> {
    if let Some(name) = spec.strip_prefix("env:") {
        return Ok(std::env::var(name)
            .map_err(|_| format!("{what}: environment variable {name} is not set"))?
            .into_bytes());
    }
    if let Some(path) = spec.strip_prefix("file:") {
        let mut b = std::fs::read(path).map_err(|e| format!("{what}: {path}: {e}"))?;
        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            b.pop();
        }
        return Ok(b);
    }
    Ok(spec.as_bytes().to_vec())
}

/// A secret given on the command line: only as `env:NAME` or `file:PATH` (a literal would show
/// in the process list).
pub fn read_secret(what: &str, spec: &str) -> Result<String, String> {
    if !spec.starts_with("env:") && !spec.starts_with("file:") {
        return Err(format!("{what}: give env:NAME or file:PATH, not the secret itself"));
    }
    String::from_utf8(secret_bytes(what, spec)?).map_err(|_| format!("{what}: not UTF-8"))
}

impl ChapConfig {
    /// Reads the secrets (from the environment or files where they say so) and checks them.
    pub fn resolve(&self) -> Result<crate::iscsi::chap::ChapSecrets, String> {
        use crate::iscsi::chap::{ChapSecrets, SECRET_LEN_MAX, SECRET_LEN_MIN, Secret};
        let read = |what: &str, spec: &str| -> Result<Secret, String> {
            let bytes = secret_bytes(what, spec)?;
            if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&bytes.len()) {
                return Err(format!("{what}: must be {SECRET_LEN_MIN} to {SECRET_LEN_MAX} bytes, is {}", bytes.len()));
            }
            Ok(Secret::new(bytes))
        };
        if self.user.is_empty() {
            return Err("user: must not be empty".into());
        }
        let secret = read("secret", &self.secret)?;
        let mutual = match (&self.mutual_user, &self.mutual_secret) {
            (None, None) => None,
            (Some(user), Some(spec)) => {
                let mutual = read("mutual_secret", spec)?;
                if mutual == secret {
                    return Err("mutual_secret: must differ from secret (RFC 7143 §12.1.3)".into());
                }
                Some((user.clone(), mutual))
            }
            _ => return Err("mutual_user / mutual_secret: give both or neither".into()),
        };
        Ok(ChapSecrets { user: self.user.clone(), secret, mutual })
    }
}

/// `[api]`: the management HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on; "off" disables the API.
    pub listen: String,
    /// Bearer token required on every request (also `$RTGT_API_TOKEN`); mandatory when the
    /// API listens on anything but loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Host header values accepted besides loopback names ("rtgt.example.com:3261").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// HTTPS: a PEM certificate chain and its private key (both, or neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// The default address of the management API.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:3261";
/// Upper bound of `server.busy_poll_us`.
pub const MAX_BUSY_POLL_US: u64 = 10_000;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_API_LISTEN.into(),
            token: None,
            allowed_hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ApiConfig {
    fn is_default(&self) -> bool {
        *self == ApiConfig::default()
    }

    /// The address to listen on, or None when the API is off.
    pub fn address(&self) -> Option<Result<SocketAddr, String>> {
        (self.listen != "off").then(|| {
            self.listen
                .parse()
                .map_err(|_| format!("api.listen: {:?} is not an address like 127.0.0.1:3261", self.listen))
        })
    }
}

/// `[embedded_s3]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedS3Config {
    /// Address of its HTTP endpoint (loopback by default: the credentials are fixed), or
    /// "off". LUNs reach the store in-process either way.
    #[serde(default = "default_embedded_listen")]
    pub listen: String,
    /// Directory holding the buckets; relative to data_dir.
    #[serde(default = "default_embedded_root")]
    pub root: PathBuf,
    /// Credentials of the HTTP endpoint (the secret as is, `env:NAME` or `file:PATH`); by
    /// default the store's own, generated in `<root>/.rtgt-credentials`. Needed to listen on
    /// anything but loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

impl EmbeddedS3Config {
    /// The configured credentials, if any.
    pub fn credentials(&self) -> Result<Option<crate::s3::embedded::Credentials>, String> {
        match (&self.access_key, &self.secret_key) {
            (None, None) => Ok(None),
            (Some(access_key), Some(spec)) => {
                let secret = String::from_utf8(secret_bytes("embedded_s3.secret_key", spec)?)
                    .map_err(|_| "embedded_s3.secret_key: not UTF-8".to_string())?;
                Ok(Some(crate::s3::embedded::Credentials { access_key: access_key.clone(), secret_key: secret }))
            }
            _ => Err("embedded_s3.access_key / secret_key: give both or neither".into()),
        }
    }

    /// The address of the HTTP endpoint, or None when it is off.
    pub fn address(&self) -> Option<Result<SocketAddr, String>> {
        (self.listen != "off").then(|| {
            self.listen
                .parse()
                .map_err(|_| format!("embedded_s3.listen: {:?} is not an address like 127.0.0.1:9010", self.listen))
        })
    }
}

fn default_embedded_listen() -> String {
    "127.0.0.1:9010".into()
}

fn default_embedded_root() -> PathBuf {
    PathBuf::from("s3")
}

/// `[server]`: protocol limits and where local data lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory for data the target creates itself (relative paths of file LUNs resolve here).
    pub data_dir: Option<PathBuf>,
    /// Commands one session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u16,
    /// Accept immediate and unsolicited data (ImmediateData=Yes, InitialR2T=No).
    pub unsolicited_data: bool,
    /// Allow CRC32C header and data digests when the initiator asks for them.
    pub digests: bool,
    /// Idle seconds before the target pings an initiator with a NOP-In.
    pub nop_interval_secs: u64,
    /// Seconds without an answer after a ping before the connection is dropped.
    pub nop_timeout_secs: u64,
    /// Largest transfer of one command, in bytes.
    pub max_transfer_bytes: u32,
    /// Microseconds a connection, and a file LUN's I/O thread, keep polling for work before they
    /// let their thread sleep: lower latency at low queue depth for some CPU. 0 turns it off.
    pub busy_poll_us: u64,
    /// Bytes of command data and unwritten responses all connections together may hold;
    /// beyond it commands wait (initiators see their window stall), memory does not grow.
    pub io_memory_max: u64,
    /// Connections at once, in total and from one address; logins in progress at once.
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    pub max_logins_in_progress: u32,
    /// Sessions one initiator name may hold at once.
    pub max_sessions_per_initiator: u32,
    /// Where LUNs created through the API may be besides the data directory: directories,
    /// and block devices by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_paths: Vec<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let limits = TargetLimits::default();
        let conn = ConnConfig::default();
        let admission = crate::server::admission::AdmissionLimits::default();
        ServerConfig {
            data_dir: None,
            queue_depth: conn.queue_depth,
            max_recv_data_segment_length: limits.max_recv_data_segment_len,
            max_burst_length: limits.max_burst_len,
            first_burst_length: limits.first_burst_len,
            max_outstanding_r2t: limits.max_outstanding_r2t,
            unsolicited_data: limits.unsolicited_data,
            digests: true,
            nop_interval_secs: conn.nop_interval.as_secs(),
            nop_timeout_secs: conn.nop_timeout.as_secs(),
            max_transfer_bytes: conn.max_transfer_bytes,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            io_memory_max: crate::iscsi::memory::DEFAULT_IO_MEMORY,
            max_connections: admission.connections,
            max_connections_per_address: admission.connections_per_address,
            max_logins_in_progress: admission.logins_in_progress,
            max_sessions_per_initiator: crate::server::DEFAULT_SESSIONS_PER_INITIATOR,
            allowed_paths: Vec::new(),
        }
    }
}

/// `[[portal_group]]`: a tag and the addresses it listens on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalGroupConfig {
    pub tag: u16,
    pub portals: Vec<String>,
    /// ALUA: the asymmetric access state of this group's port on every target it serves
    /// ("active_optimized", the default; "active_non_optimized", "standby", "unavailable",
    /// "transitioning"), reported to multipath initiators by REPORT TARGET PORT GROUPS.
    #[serde(default, skip_serializing_if = "is_default_state")]
    pub alua_state: crate::scsi::alua::AluaState,
}

fn is_default_state(s: &crate::scsi::alua::AluaState) -> bool {
    *s == crate::scsi::alua::AluaState::default()
}

/// `[[target]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Portal groups the target is reachable through; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_groups: Option<Vec<u16>>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    /// Initiator names allowed to log in; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_initiators: Option<Vec<String>>,
    /// Source addresses or networks allowed ("10.0.0.0/8"); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_addresses: Option<Vec<String>>,
    /// CHAP required of initiators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapConfig>,
    /// Initiator names that may reset the whole target (TARGET WARM/COLD RESET); absent:
    /// anyone on a target open to anyone, nobody on one with an ACL, CHAP or masked LUNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_initiators: Option<Vec<String>>,
}

impl TargetConfig {
    /// A target with no LUNs, open to any initiator.
    pub fn new(name: &str) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            alias: None,
            portal_groups: None,
            luns: Vec::new(),
            allowed_initiators: None,
            allowed_addresses: None,
            chap: None,
            reset_initiators: None,
        }
    }

    /// Its access rules, secrets read.
    pub fn access(&self) -> Result<crate::server::access::Access, String> {
        use crate::server::access::{Access, Network};
        let networks = match &self.allowed_addresses {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|s| Network::parse(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("allowed_addresses: {e}"))?,
            ),
        };
        let initiators = self.allowed_initiators.as_ref().map(|l| l.iter().map(|n| n.to_lowercase()).collect());
        let chap = self.chap.as_ref().map(|c| c.resolve().map_err(|e| format!("chap.{e}"))).transpose()?;
        let resetters = self.reset_initiators.as_ref().map(|l| l.iter().map(|n| n.to_lowercase()).collect());
        Ok(Access { initiators, networks, chap, resetters })
    }
}

/// `[[target.lun]]`: a logical unit and its backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub lun: u16,
    /// memory, file, uring, null or s3.
    pub backend: Backend,
    /// Capacity: bytes, or a string such as "10GiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// file, uring: the file or block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// file, uring: create the file if it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    /// uring: ring entries, the bound on requests in flight (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// uring: open with O_DIRECT, bypassing the page cache (blocks must be a multiple of the
    /// device's logical block size).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Unit serial number (VPD 0x80), printable ASCII; derived when absent (from the volume's
    /// location for s3, from the target name and LUN otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The logical unit's NAA designator (VPD 0x83), 16 hex digits of NAA format 2, 3 or 5
    /// ("0x3..." is locally assigned); derived like the serial when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naa: Option<String>,
    /// s3: the volume, `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// s3: serve this snapshot of the volume, read-only. No lease is taken: the target that
    /// serves the volume itself goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// s3: endpoint URL (MinIO, Ceph RGW), or "embedded"; AWS S3 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// s3: path-style addressing; on by default with a custom endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// s3: static credentials; otherwise the AWS default chain (environment, profile, IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// s3: chunk object size of a new volume (default 4MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<Size>,
    /// s3: write-back cache size (default 256MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<Size>,
    /// s3: take the volume over even if another target holds its lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// s3: the volume is served by a failover pair (another target, its standby, takes it
    /// over when this one's lease lapses): this target serves nothing once its lease is not
    /// renewed in time, not even from its cache. Needs durability "s3".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
    /// s3: what SYNCHRONIZE CACHE and FUA wait for: "s3" (the default: the data is in the
    /// object store) or "local" (in a journal in `cache_dir`, uploaded in the background).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// s3: a local directory for the journal (`durability = "local"`) and the disk cache
    /// (`cache_disk_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cache_dir: Option<PathBuf>,
    /// s3: bytes of a read cache on local disk, in `cache_dir` (off when absent): pieces of
    /// chunk objects that reads fetched, kept across restarts, each checked against the
    /// object's current version and its CRCs before it is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_disk_size: Option<Size>,
    /// s3: bytes of logs the journal holds at most (default 1GiB); when full, syncs wait for
    /// the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_size: Option<Size>,
    /// LUN masking: only these initiators see the LUN (REPORT LUNS included); absent: every
    /// initiator allowed on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiators: Option<Vec<String>>,
    /// s3: the volume is encrypted (created so with `create = true`), its data key wrapped by
    /// the 256-bit key in this file (32 bytes, 64 hex digits or base64)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub encryption_key_file: Option<PathBuf>,
    /// ...or in this environment variable (hex or base64)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_env: Option<String>,
    /// ...or derived (Argon2id) from the passphrase in this file...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub encryption_passphrase_file: Option<PathBuf>,
    /// ...or in this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_passphrase_env: Option<String>,
    /// s3: a volume created (`create = true`) compresses its chunks so: "zstd" or "lz4". An
    /// existing volume keeps the compression it was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::s3::volume::Compression>,
}

impl LunConfig {
    /// Its mask, for [`crate::scsi::ScsiTarget::set_mask`].
    pub fn mask(&self) -> Option<BTreeSet<String>> {
        self.initiators.as_ref().map(|names| names.iter().cloned().collect())
    }

    /// Where the key of an encrypted volume comes from (at most one of the four settings).
    pub fn encryption_key(&self) -> Result<Option<KeySource>, String> {
        let given: Vec<KeySource> = [
            self.encryption_key_file.clone().map(|p| KeySource::Key(Held::File(p))),
            self.encryption_key_env.clone().map(|v| KeySource::Key(Held::Env(v))),
            self.encryption_passphrase_file.clone().map(|p| KeySource::Passphrase(Held::File(p))),
            self.encryption_passphrase_env.clone().map(|v| KeySource::Passphrase(Held::Env(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.len() {
            0 | 1 => Ok(given.into_iter().next()),
            _ => Err("encryption_key_file, encryption_key_env, encryption_passphrase_file, \
                      encryption_passphrase_env: give one"
                .into()),
        }
    }
}

/// What a SYNCHRONIZE CACHE or FUA write of an S3 LUN waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The data is in the object store: it survives the loss of this machine.
    S3,
    /// The data is fsynced in a local journal: it survives a crash or a power loss of this
    /// machine, not its loss, nor a takeover by another node before the upload.
    Local,
}

impl LunConfig {
    /// A LUN of the given backend with every optional field unset.
    pub fn new(lun: u16, backend: Backend) -> LunConfig {
        LunConfig {
            lun,
            backend,
            size: None,
            block_size: None,
            path: None,
            create: None,
            queue_depth: None,
            direct: false,
            read_only: false,
            serial: None,
            naa: None,
            url: None,
            snapshot: None,
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            chunk_size: None,
            cache_size: None,
            force: false,
            failover: false,
            durability: None,
            cache_dir: None,
            journal_size: None,
            cache_disk_size: None,
            initiators: None,
            encryption_key_file: None,
            encryption_key_env: None,
            encryption_passphrase_file: None,
            encryption_passphrase_env: None,
            compression: None,
        }
    }
}

/// An S3 volume that did not open: its LUN is the standby when another target holds it.
impl From<crate::s3::volume::OpenError> for LunOpenError {
    fn from(e: crate::s3::volume::OpenError) -> LunOpenError {
        match e {
            e @ crate::s3::volume::OpenError::HeldElsewhere { .. } => LunOpenError::Standby(e.to_string()),
            e => LunOpenError::Failed(e.to_string()),
        }
    }
}

/// The default chunk size of S3 volumes.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// The default write-back cache of an S3 volume.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;
/// The default bound of an S3 volume's local journal.
pub const DEFAULT_JOURNAL_SIZE: u64 = 1 << 30;

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A byte count written as a number or with a binary unit ("512MiB", "10G").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (use e.g. 10GiB or 1048576)"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" | "k" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?} (use KiB, MiB, GiB or TiB)")),
        };
        n.checked_mul(1 << shift).map(Size).ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// In the API: bytes, or a string such as "10GiB" (always a string in answers).
impl utoipa::PartialSchema for Size {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
            .item(ObjectBuilder::new().schema_type(Type::String).examples(["10GiB"]))
            .description(Some("Bytes, or a number with a unit: KiB, MiB, GiB, TiB"))
            .into()
    }
}

impl utoipa::ToSchema for Size {
    fn name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Every problem found in a configuration, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Checks an iSCSI name (RFC 3720 §3.2.6): iqn., eui. or naa. formats.
pub fn validate_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err("longer than 223 bytes".into());
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        let date_ok = rest.len() >= 8
            && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
            && rest.as_bytes()[7] == b'.';
        if !date_ok {
            return Err("an iqn. name continues with a date yyyy-mm. (e.g. iqn.2026-11.org.example:disk1)".into());
        }
        let authority = rest[8..].split(':').next().unwrap_or("");
        if authority.is_empty() {
            return Err("an iqn. name needs a naming authority after the date".into());
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(*c))) {
            return Err(format!("character {c:?} is not allowed (lowercase letters, digits, '-', '.', ':')"));
        }
        return Ok(());
    }
    let hex = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = name.strip_prefix("eui.") {
        return if hex(rest, &[16]) { Ok(()) } else { Err("an eui. name has 16 hex digits".into()) };
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        return if hex(rest, &[16, 32]) { Ok(()) } else { Err("a naa. name has 16 or 32 hex digits".into()) };
    }
    Err("an iSCSI name starts with iqn., eui. or naa.".into())
}

/// Most entries of one LUN's io_uring (`queue_depth`).
const URING_DEPTH_MAX: u32 = 4096;

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        Config::from_toml(&text).map_err(|mut e| {
            e.0.iter_mut().for_each(|p| *p = format!("{}: {p}", path.display()));
            e
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration serializes")
    }

    /// The configuration `rtgt serve` runs without a file: one target with a 1 GiB S3 LUN 1 on
    /// the embedded object store under the data directory, on 127.0.0.1:3260.
    pub fn embedded_default(data_dir: &Path) -> Config {
        Config {
            server: ServerConfig { data_dir: Some(data_dir.to_path_buf()), ..ServerConfig::default() },
            portal_groups: vec![PortalGroupConfig {
                tag: 1,
                portals: vec!["127.0.0.1:3260".into()],
                alua_state: Default::default(),
            }],
            targets: vec![TargetConfig {
                alias: Some("rtgt default".into()),
                luns: vec![LunConfig {
                    size: Some(Size(1 << 30)),
                    block_size: Some(512),
                    create: Some(true),
                    url: Some(format!("s3://{DEFAULT_BUCKET}/default")),
                    endpoint: Some("embedded".into()),
                    ..LunConfig::new(1, Backend::S3)
                }],
                ..TargetConfig::new(DEFAULT_TARGET)
            }],
            embedded_s3: Some(EmbeddedS3Config {
                listen: default_embedded_listen(),
                root: default_embedded_root(),
                access_key: None,
                secret_key: None,
            }),
            api: ApiConfig::default(),
            discovery_chap: None,
        }
    }

    /// Where the embedded S3 server keeps its buckets.
    pub fn embedded_root(&self) -> Option<PathBuf> {
        let e = self.embedded_s3.as_ref()?;
        Some(if e.root.is_absolute() { e.root.clone() } else { self.data_dir().join(&e.root) })
    }

    /// Buckets that LUNs expect on the embedded server.
    pub fn embedded_buckets(&self) -> Vec<String> {
        let mut buckets: Vec<String> = self
            .targets
            .iter()
            .flat_map(|t| &t.luns)
            .filter(|l| l.endpoint.as_deref() == Some("embedded"))
            .filter_map(|l| crate::s3::url::S3Url::parse(l.url.as_deref()?).ok())
            .map(|u| u.bucket)
            .collect();
        buckets.sort();
        buckets.dedup();
        buckets
    }

    pub fn data_dir(&self) -> PathBuf {
        self.server.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The path of a file LUN, relative paths resolved against the data directory.
    pub fn lun_path(&self, lun: &LunConfig) -> Option<PathBuf> {
        lun.path.as_ref().map(|p| if p.is_absolute() { p.clone() } else { self.data_dir().join(p) })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let s = &self.server;
        if s.queue_depth == 0 || s.queue_depth > 4096 {
            problems.push(format!("server.queue_depth: {} is out of range (1-4096)", s.queue_depth));
        }
        for (field, v) in [
            ("max_recv_data_segment_length", s.max_recv_data_segment_length),
            ("max_burst_length", s.max_burst_length),
            ("first_burst_length", s.first_burst_length),
        ] {
            if !(SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX).contains(&v) {
                problems.push(format!("server.{field}: {v} is out of range ({SEGMENT_LEN_MIN}-{SEGMENT_LEN_MAX})"));
            }
        }
        if s.first_burst_length > s.max_burst_length {
            problems.push("server.first_burst_length: larger than max_burst_length".into());
        }
        if s.max_outstanding_r2t == 0 {
            problems.push("server.max_outstanding_r2t: must be at least 1".into());
        }
        if s.busy_poll_us > MAX_BUSY_POLL_US {
            problems.push(format!("server.busy_poll_us: at most {MAX_BUSY_POLL_US} (polling longer only burns CPU)"));
        }
        if s.nop_interval_secs == 0 || s.nop_timeout_secs == 0 {
            problems.push("server.nop_interval_secs / nop_timeout_secs: must be at least 1".into());
        }
        if s.max_transfer_bytes < 65536 {
            problems.push("server.max_transfer_bytes: must be at least 65536".into());
        }
        if let Some(chap) = &self.discovery_chap
            && let Err(e) = chap.resolve()
        {
            problems.push(format!("discovery_chap.{e}"));
        }
        if let Some(e) = &self.embedded_s3 {
            match e.credentials() {
                Err(why) => problems.push(why),
                Ok(None) if matches!(e.address(), Some(Ok(a)) if !a.ip().is_loopback()) => problems.push(
                    "embedded_s3.listen: not a loopback address; set embedded_s3.access_key and secret_key to expose it"
                        .into(),
                ),
                Ok(_) => {}
            }
        }
        if s.io_memory_max < s.max_transfer_bytes as u64 {
            problems.push("server.io_memory_max: must hold at least one transfer (max_transfer_bytes)".into());
        }
        for (field, v) in [
            ("max_connections", s.max_connections),
            ("max_connections_per_address", s.max_connections_per_address),
            ("max_logins_in_progress", s.max_logins_in_progress),
            ("max_sessions_per_initiator", s.max_sessions_per_initiator),
        ] {
            if v == 0 {
                problems.push(format!("server.{field}: must be at least 1"));
            }
        }

        let mut tags = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, pg) in self.portal_groups.iter().enumerate() {
            let at = format!("portal_group[{i}] (tag {})", pg.tag);
            if pg.tag == 0 {
                problems.push(format!("{at}.tag: must be 1-65535"));
            }
            if !tags.insert(pg.tag) {
                problems.push(format!("{at}.tag: duplicate tag {}", pg.tag));
            }
            if pg.portals.is_empty() {
                problems.push(format!("{at}.portals: at least one address is needed"));
            }
            for p in &pg.portals {
                match p.parse::<SocketAddr>() {
                    Ok(a) if !addrs.insert(a) => problems.push(format!("{at}.portals: {p} is listed twice")),
                    Ok(_) => {}
                    Err(_) => problems.push(format!("{at}.portals: {p:?} is not an address like 0.0.0.0:3260")),
                }
            }
        }
        if self.portal_groups.is_empty() && !self.targets.is_empty() {
            problems.push("portal_group: at least one portal group is needed to reach the targets".into());
        }

        if let Some(Err(e)) = self.api.address() {
            problems.push(e);
        }
        if let Some(Some(Err(e))) = self.embedded_s3.as_ref().map(EmbeddedS3Config::address) {
            problems.push(e);
        }
        let mut names = BTreeSet::new();
        let mut backing: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut volumes: BTreeMap<(String, String), String> = BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let at = format!("target[{i}] ({})", t.name);
            if let Err(e) = validate_iscsi_name(&t.name) {
                problems.push(format!("{at}.name: {e}"));
            }
            if !names.insert(t.name.clone()) {
                problems.push(format!("{at}.name: duplicate target name"));
            }
            for tag in t.portal_groups.iter().flatten() {
                if !tags.contains(tag) {
                    problems.push(format!("{at}.portal_groups: no portal group with tag {tag}"));
                }
            }
            for name in t.allowed_initiators.iter().flatten() {
                if let Err(e) = validate_iscsi_name(name) {
                    problems.push(format!("{at}.allowed_initiators: {name:?}: {e}"));
                }
            }
            for name in t.reset_initiators.iter().flatten() {
                if let Err(e) = validate_iscsi_name(name) {
                    problems.push(format!("{at}.reset_initiators: {name:?}: {e}"));
                }
            }
            if let Err(e) = t.access() {
                problems.push(format!("{at}.{e}"));
            }
            let mut luns = BTreeSet::new();
            for (j, l) in t.luns.iter().enumerate() {
                let at = format!("{at}.lun[{j}] (LUN {})", l.lun);
                if !luns.insert(l.lun) {
                    problems.push(format!("{at}.lun: duplicate LUN number"));
                }
                if l.lun >= 16384 {
                    problems.push(format!("{at}.lun: must be 0-16383"));
                }
                problems.extend(self.validate_lun(l).into_iter().map(|p| format!("{at}.{p}")));
                // A snapshot is read only: any number of LUNs may serve one beside its volume.
                let writable_volume = l.url.as_deref().filter(|_| l.snapshot.is_none());
                if let Some(u) = writable_volume.and_then(|u| crate::s3::url::S3Url::parse(u).ok()) {
                    let key = (l.endpoint.clone().unwrap_or_default(), u.to_string());
                    if let Some(other) = volumes.insert(key, at.clone()) {
                        problems.push(format!(
                            "{at}.url: {u} is already the volume of {other}; two LUNs on one S3 prefix would corrupt it"
                        ));
                    }
                }
                if let Some(path) = self.lun_path(l) {
                    let key = std::fs::canonicalize(&path).unwrap_or(path);
                    if let Some(other) = backing.insert(key.clone(), at.clone()) {
                        problems.push(format!(
                            "{at}.path: {} is already the backing of {other}; two LUNs on one file would corrupt it",
                            key.display()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError(problems)) }
    }

    fn validate_lun(&self, l: &LunConfig) -> Vec<String> {
        let mut problems = Vec::new();
        for name in l.initiators.iter().flatten() {
            if let Err(e) = validate_iscsi_name(name) {
                problems.push(format!("initiators: {name:?}: {e}"));
            }
        }
        let bs = l.block_size.unwrap_or(512);
        if bs != 512 && bs != 4096 {
            problems.push(format!("block_size: {bs} is not supported (512 or 4096)"));
        }
        if let Some(Size(size)) = l.size {
            if size < bs as u64 {
                problems.push(format!("size: {size} bytes is smaller than one block"));
            } else if size % bs as u64 != 0 {
                problems.push(format!("size: {size} bytes is not a multiple of the block size {bs}"));
            }
        }
        if let Some(serial) = &l.serial
            && (serial.is_empty() || serial.len() > SERIAL_BYTES_MAX || !serial.bytes().all(|b| b.is_ascii_graphic()))
        {
            problems.push(format!(
                "serial: {serial:?} must be 1 to {SERIAL_BYTES_MAX} printable ASCII characters without spaces"
            ));
        }
        if let Some(Err(e)) = l.naa.as_deref().map(parse_naa) {
            problems.push(format!("naa: {e}"));
        }
        if l.backend != Backend::Uring {
            if l.queue_depth.is_some() {
                problems.push(format!("queue_depth: not used by backend {:?} (only uring)", l.backend.name()));
            }
            if l.direct {
                problems.push(format!("direct: not used by backend {:?} (only uring)", l.backend.name()));
            }
        }
        if let Some(depth) = l.queue_depth.filter(|d| !(1..=URING_DEPTH_MAX).contains(d)) {
            problems.push(format!("queue_depth: {depth} is out of range (1 to {URING_DEPTH_MAX})"));
        }
        match &l.backend {
            Backend::Memory | Backend::Null => {
                if l.size.is_none() {
                    problems.push(format!("size: required for backend {:?}", l.backend.name()));
                }
                if l.path.is_some() {
                    problems.push(format!("path: not used by backend {:?}", l.backend.name()));
                }
            }
            Backend::File | Backend::Uring => {
                if l.path.is_none() {
                    problems.push(format!("path: required for backend {:?}", l.backend.name()));
                }
            }
            Backend::S3 => problems.extend(self.validate_s3_lun(l)),
            Backend::Unknown(other) => {
                problems.push(format!("backend: unknown backend {other:?} (one of {})", Backend::known_names()))
            }
        }
        match l.encryption_key() {
            Err(e) => problems.push(e),
            Ok(Some(_)) if l.backend != Backend::S3 => {
                problems.push("encryption_*: only for backend \"s3\" (volumes encrypt their objects)".into())
            }
            Ok(_) => {}
        }
        if l.snapshot.is_some() && l.backend != Backend::S3 {
            problems.push("snapshot: only for backend \"s3\" (volumes take snapshots)".into());
        }
        if l.failover && l.backend != Backend::S3 {
            problems.push("failover: only for backend \"s3\" (a volume two targets can reach)".into());
        }
        if l.failover && l.durability == Some(Durability::Local) {
            problems.push(
                "failover: needs durability = \"s3\" (a local journal keeps acknowledged writes where the \
                 standby cannot see them)"
                    .into(),
            );
        }
        problems
    }

    fn validate_s3_lun(&self, l: &LunConfig) -> Vec<String> {
        let mut problems = Vec::new();
        match l.url.as_deref() {
            None => problems.push("url: required for backend \"s3\" (s3://bucket/prefix)".into()),
            Some(u) => {
                if let Err(e) = crate::s3::url::S3Url::parse(u) {
                    problems.push(format!("url: {e}"));
                }
            }
        }
        if l.path.is_some() {
            problems.push("path: not used by backend \"s3\" (use url)".into());
        }
        if l.endpoint.as_deref() == Some("embedded") && self.embedded_s3.is_none() {
            problems.push("endpoint: \"embedded\" needs an [embedded_s3] section".into());
        }
        if let Some(name) = &l.snapshot {
            if let Err(e) = crate::storage::snapshots::SnapshotName::parse(name) {
                problems.push(format!("snapshot: {e}"));
            }
            if l.create == Some(true) || l.failover || l.durability == Some(Durability::Local) || l.force {
                problems.push("snapshot: served read-only as it is (no create, failover, force or journal)".into());
            }
        }
        if l.create == Some(true) && l.size.is_none() {
            problems.push("size: required to create a volume (create = true)".into());
        }
        if l.compression.is_some() && l.create != Some(true) {
            problems.push("compression: chosen when the volume is created (create = true)".into());
        }
        if l.access_key_id.is_some() != l.secret_access_key.is_some() {
            problems.push("access_key_id / secret_access_key: give both or neither".into());
        }
        if let Some(Size(chunk)) = l.chunk_size {
            let bs = l.block_size.unwrap_or(512) as u64;
            if !chunk.is_power_of_two() || !(64 * 1024..=256 << 20).contains(&chunk) || chunk < bs {
                problems.push(format!("chunk_size: {} must be a power of two from 64KiB to 256MiB", Size(chunk)));
            }
        }
        if let Some(Size(cache)) = l.cache_size
            && cache < l.chunk_size.map_or(DEFAULT_CHUNK_SIZE, |s| s.0)
        {
            problems.push("cache_size: must hold at least one chunk".into());
        }
        let local = l.durability == Some(Durability::Local);
        if local && l.cache_dir.is_none() {
            problems.push("cache_dir: required for durability = \"local\" (the journal's directory)".into());
        }
        if l.cache_disk_size.is_some() && l.cache_dir.is_none() {
            problems.push("cache_dir: required for cache_disk_size (the disk cache's directory)".into());
        }
        if !local && l.cache_disk_size.is_none() && l.cache_dir.is_some() {
            problems.push("cache_dir: only used with durability = \"local\" or cache_disk_size".into());
        }
        if !local && l.journal_size.is_some() {
            problems.push("journal_size: only used with durability = \"local\"".into());
        }
        problems
    }

    /// Server settings derived from `[server]`.
    pub fn settings(&self) -> Settings {
        let s = &self.server;
        Settings {
            limits: TargetLimits {
                max_recv_data_segment_len: s.max_recv_data_segment_length,
                max_burst_len: s.max_burst_length,
                first_burst_len: s.first_burst_length,
                max_outstanding_r2t: s.max_outstanding_r2t,
                unsolicited_data: s.unsolicited_data,
                header_digest_allowed: s.digests,
                data_digest_allowed: s.digests,
                ..TargetLimits::default()
            },
            conn: ConnConfig {
                queue_depth: s.queue_depth,
                nop_interval: Duration::from_secs(s.nop_interval_secs),
                nop_timeout: Duration::from_secs(s.nop_timeout_secs),
                max_transfer_bytes: s.max_transfer_bytes,
                memory: Arc::new(crate::iscsi::memory::IoMemory::new(s.io_memory_max)),
                ..ConnConfig::default()
            },
            busy_poll: Duration::from_micros(s.busy_poll_us),
            admission: crate::server::admission::AdmissionLimits {
                connections: s.max_connections,
                connections_per_address: s.max_connections_per_address,
                logins_in_progress: s.max_logins_in_progress,
            },
            sessions_per_initiator: s.max_sessions_per_initiator,
            ..Settings::default()
        }
    }

    fn file_options(&self, l: &LunConfig) -> FileOptions {
        FileOptions {
            size: l.size.map(|s| s.0),
            create: l.create.unwrap_or(false),
            busy_poll: Duration::from_micros(self.server.busy_poll_us),
            atomic_intents: Some(self.data_dir().join(ATOMIC_WRITES_DIR)),
        }
    }
}

/// The longest configured serial (VPD 0x80 and the T10 vendor id designator carry it).
const SERIAL_BYTES_MAX: usize = 64;

/// A configured NAA designator: 16 hex digits (an optional `0x`), NAA format 2, 3 or 5 (the
/// 8-byte formats).
pub fn parse_naa(s: &str) -> Result<u64, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    let naa = match hex.len() {
        16 => u64::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not 16 hex digits"))?,
        _ => return Err(format!("{s:?} is not 16 hex digits")),
    };
    match naa >> 60 {
        2 | 3 | 5 => Ok(naa),
        f => Err(format!("{s:?} has NAA format {f}; 8-byte designators are formats 2, 3 (locally assigned) and 5")),
    }
}

/// The bucket of the embedded default volume.
pub const DEFAULT_BUCKET: &str = "rtgt";

/// The target of the embedded default configuration.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.dev.rtgt:default";

/// `$RTGT_DATA_DIR`, or `./rtgt-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("RTGT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("rtgt-data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(Size::parse("10GiB"), Ok(Size(10 << 30)));
        assert_eq!(Size::parse("512M"), Ok(Size(512 << 20)));
        assert_eq!(Size::parse("4096"), Ok(Size(4096)));
        assert!(Size::parse("10XB").unwrap_err().contains("unknown size unit"));
        assert!(Size::parse("lots").is_err());
        assert_eq!(Size(10 << 30).to_string(), "10GiB");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn iscsi_names() {
        assert!(validate_iscsi_name("iqn.2026-11.org.example:disk1").is_ok());
        assert!(validate_iscsi_name("eui.02004567a425678d").is_ok());
        assert!(validate_iscsi_name("naa.52004567ba64678d").is_ok());
        assert!(validate_iscsi_name("iqn.2026.org.example").is_err());
        assert!(validate_iscsi_name("iqn.2026-11.Org.Example").is_err());
        assert!(validate_iscsi_name("disk1").is_err());
    }

    #[test]
    fn full_config_parses_and_round_trips() {
        let text = r#"
            [server]
            queue_depth = 64

            [[portal_group]]
            tag = 1
            portals = ["127.0.0.1:3260", "[::1]:3260"]

            [[target]]
            name = "iqn.2026-11.org.example:disk1"
            alias = "disk one"

            [[target.lun]]
            lun = 0
            backend = "memory"
            size = "64MiB"

            [[target.lun]]
            lun = 1
            backend = "file"
            path = "/tmp/x.img"
            size = 1048576
            block_size = 4096
            create = true
        "#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.server.queue_depth, 64);
        assert_eq!(c.targets[0].luns[0].size, Some(Size(64 << 20)));
        let back = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_names_each_field() {
        let text = r#"
            [[portal_group]]
            tag = 1
            portals = ["nonsense"]

            [[target]]
            name = "disk1"
            portal_groups = [2]

            [[target.lun]]
            lun = 0
            backend = "tape"
            size = "1000"

            [[target.lun]]
            lun = 0
            backend = "file"

            [[target]]
            name = "iqn.2026-11.org.example:a"
            [[target.lun]]
            lun = 0
            backend = "file"
            path = "/tmp/same.img"
            queue_depth = 64
            [[target.lun]]
            lun = 1
            backend = "uring"
            path = "/tmp/same.img"
            queue_depth = 0
        "#;
        let err = Config::from_toml(text).unwrap_err().0.join("\n");
        for expected in [
            "portal_group[0] (tag 1).portals: \"nonsense\" is not an address",
            "target[0] (disk1).name: an iSCSI name starts with",
            "target[0] (disk1).portal_groups: no portal group with tag 2",
            "target[0] (disk1).lun[0] (LUN 0).backend: unknown backend \"tape\"",
            "target[0] (disk1).lun[0] (LUN 0).size: 1000 bytes is not a multiple of the block size 512",
            "target[0] (disk1).lun[1] (LUN 0).lun: duplicate LUN number",
            "target[0] (disk1).lun[1] (LUN 0).path: required for backend \"file\"",
            "target[1] (iqn.2026-11.org.example:a).lun[0] (LUN 0).queue_depth: not used by backend \"file\" (only uring)",
            "target[1] (iqn.2026-11.org.example:a).lun[1] (LUN 1).queue_depth: 0 is out of range (1 to 4096)",
            "two LUNs on one file would corrupt it",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn a_portal_group_has_an_alua_state() {
        use crate::scsi::alua::AluaState;
        let text = |state: &str| format!("[[portal_group]]\ntag = 2\nportals = [\"0.0.0.0:3261\"]\n{state}");
        let c = Config::from_toml(&text("alua_state = \"standby\"\n")).unwrap();
        assert_eq!(c.portal_groups[0].alua_state, AluaState::Standby);
        assert_eq!(Config::from_toml(&text("")).unwrap().portal_groups[0].alua_state, AluaState::ActiveOptimized);
        assert!(Config::from_toml(&text("alua_state = \"sleepy\"\n")).is_err());
        assert!(!c.to_toml().contains("active_optimized"), "the default is not written out");
    }

    #[test]
    fn identities_are_locally_assigned_follow_an_s3_volume_and_can_be_configured() {
        let config = |target: &str, luns: &str| {
            Config::from_toml(&format!(
                "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:{target}\"\n{luns}"
            ))
        };
        let c = config(
            "a",
            "[[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n\
             [[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"1MiB\"\n\
             [[target.lun]]\nlun = 2\nbackend = \"memory\"\nsize = \"1MiB\"\nserial = \"SN-42\"\nnaa = \"0x3000000000000042\"\n",
        )
        .unwrap();
        let elsewhere = config("b", "[[target.lun]]\nlun = 7\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n").unwrap();
        let id = |c: &Config, l: usize| c.lu_config(&c.targets[0].name, &c.targets[0].luns[l], 512).identity;
        assert_eq!(id(&c, 0), id(&elsewhere, 0), "one S3 volume is one device, whatever its target and LUN number");
        assert_ne!(id(&c, 1).naa, id(&c, 0).naa);
        for l in [0, 1] {
            assert_eq!(id(&c, l).naa >> 60, 3, "locally assigned, not another vendor's company id");
        }
        assert_eq!((id(&c, 2).serial.as_str(), id(&c, 2).naa), ("SN-42", 0x3000_0000_0000_0042));
        let err = config(
            "a",
            "[[target.lun]]\nlun = 0\nbackend = \"memory\"\nsize = \"1MiB\"\nserial = \"has space\"\nnaa = \"0x1000000000000042\"\n\
             [[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"1MiB\"\nnaa = \"42\"\n",
        )
        .unwrap_err()
        .0
        .join("\n");
        for expected in ["serial: \"has space\" must be", "has NAA format 1", "naa: \"42\" is not 16 hex digits"] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn local_durability_and_the_disk_cache_need_a_cache_dir_and_nothing_else_takes_one() {
        let lun = |extra: &str| {
            format!(
                "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n{extra}"
            )
        };
        let err = Config::from_toml(&lun("durability = \"local\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("cache_dir: required for durability = \"local\""), "{err}");
        let err = Config::from_toml(&lun("cache_dir = \"/var/cache/rtgt\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("only used with durability = \"local\" or cache_disk_size"), "{err}");
        let err = Config::from_toml(&lun("cache_disk_size = \"10GiB\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("cache_dir: required for cache_disk_size"), "{err}");
        let err = Config::from_toml(&lun("cache_dir = \"/c\"\ncache_disk_size = \"1GiB\"\njournal_size = \"1GiB\"\n"))
            .unwrap_err()
            .0
            .join("\n");
        assert!(err.contains("journal_size: only used with durability = \"local\""), "{err}");
        let ok = Config::from_toml(&lun("cache_dir = \"/var/cache/rtgt\"\ncache_disk_size = \"10GiB\"\n")).unwrap();
        assert_eq!(ok.targets[0].luns[0].cache_disk_size, Some(Size(10 << 30)));
        let err = Config::from_toml(&lun("durability = \"remote\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("durability"), "{err}");
        let ok = Config::from_toml(&lun(
            "durability = \"local\"\ncache_dir = \"/var/cache/rtgt\"\njournal_size = \"64MiB\"\n",
        ))
        .unwrap();
        let l = &ok.targets[0].luns[0];
        assert_eq!((l.durability, l.journal_size), (Some(Durability::Local), Some(Size(64 << 20))));
    }

    #[test]
    fn failover_is_for_s3_volumes_made_durable_in_the_store() {
        let lun = |backend: &str, extra: &str| {
            format!(
                "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"{backend}\"\n{extra}failover = true\n"
            )
        };
        let ok = Config::from_toml(&lun("s3", "url = \"s3://bucket/v\"\n")).unwrap();
        assert!(ok.targets[0].luns[0].failover);
        let err = Config::from_toml(&lun("file", "path = \"/srv/d.img\"\nsize = \"1GiB\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("failover: only for backend \"s3\""), "{err}");
        let local = "url = \"s3://bucket/v\"\ndurability = \"local\"\ncache_dir = \"/c\"\n";
        let err = Config::from_toml(&lun("s3", local)).unwrap_err().0.join("\n");
        assert!(err.contains("failover: needs durability = \"s3\""), "{err}");
    }

    #[test]
    fn a_snapshot_is_served_read_only_beside_its_volume() {
        let luns = |extra: &str| {
            format!(
                "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n\
                 [[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n\
                 [[target.lun]]\nlun = 1\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\nsnapshot = \"daily\"\n{extra}"
            )
        };
        let ok = Config::from_toml(&luns("")).unwrap();
        assert_eq!(ok.targets[0].luns[1].snapshot.as_deref(), Some("daily"));
        let err = Config::from_toml(&luns("create = true\nsize = \"1GiB\"\n")).unwrap_err().0.join("\n");
        assert!(err.contains("snapshot: served read-only as it is"), "{err}");
        let bad = luns("").replace("\"daily\"", "\"a/b\"");
        assert!(Config::from_toml(&bad).unwrap_err().0.join("\n").contains("snapshot: snapshot name"));
        let file = "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n\
                    [[target.lun]]\nlun = 0\nbackend = \"file\"\npath = \"/d.img\"\nsize = \"1GiB\"\nsnapshot = \"x\"\n";
        let err = Config::from_toml(file).unwrap_err().0.join("\n");
        assert!(err.contains("snapshot: only for backend \"s3\""), "{err}");
    }

    #[test]
    fn an_encrypted_volume_takes_one_key_and_only_s3_encrypts() {
        let lun = |backend: &str, extra: &str| {
            format!(
                "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"{backend}\"\n{extra}"
            )
        };
        let s3 = "url = \"s3://bucket/v\"\n";
        let ok = Config::from_toml(&lun("s3", &format!("{s3}encryption_passphrase_env = \"DB_PASS\"\n"))).unwrap();
        let source = ok.targets[0].luns[0].encryption_key().unwrap();
        assert_eq!(source, Some(KeySource::Passphrase(Held::Env("DB_PASS".into()))));
        let two = format!("{s3}encryption_key_file = \"/k\"\nencryption_key_env = \"K\"\n");
        let err = Config::from_toml(&lun("s3", &two)).unwrap_err().0.join("\n");
        assert!(err.contains("give one"), "{err}");
        let file = "path = \"/srv/d.img\"\nsize = \"1GiB\"\nencryption_key_file = \"/k\"\n";
        let err = Config::from_toml(&lun("file", file)).unwrap_err().0.join("\n");
        assert!(err.contains("encryption_*: only for backend \"s3\""), "{err}");
    }

    #[test]
    fn busy_polling_is_bounded_and_reaches_the_settings() {
        let err = Config::from_toml("[server]\nbusy_poll_us = 20000\n").unwrap_err().0.join("\n");
        assert!(err.contains("server.busy_poll_us: at most 10000"), "{err}");
        let config = Config::from_toml("[server]\nbusy_poll_us = 0\n").unwrap();
        assert_eq!(config.settings().busy_poll, Duration::ZERO);
        let defaults = Config::from_toml("").unwrap();
        assert_eq!(defaults.settings().busy_poll, Duration::from_micros(DEFAULT_BUSY_POLL_US));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[server]\nqueue_dept = 3\n").unwrap_err();
        assert!(err.0[0].contains("queue_dept"), "{err}");
    }

    #[test]
    fn embedded_default_is_valid() {
        Config::embedded_default(Path::new("/tmp/rtgt-test")).validate().unwrap();
    }
}
