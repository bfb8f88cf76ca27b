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
mod size;
mod validate;
pub use backend::Backend;
pub use size::Size;
pub use validate::{ConfigError, parse_naa, validate_iscsi_name};

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
    /// Seconds a connection may leave the target waiting for what it owes (write data asked for
    /// with an R2T, a command filling a CmdSN gap) before it is dropped.
    pub data_out_timeout_secs: u64,
    /// Largest transfer of one command, in bytes.
    pub max_transfer_bytes: u32,
    /// Microseconds a connection, and a file LUN's I/O thread, keep polling for work before they
    /// let their thread sleep: lower latency at low queue depth for some CPU. 0 turns it off.
    pub busy_poll_us: u64,
    /// Threads that run the connections (the async runtime's workers); 0: half the CPUs, at
    /// least one ([`ServerConfig::worker_threads`]).
    pub workers: u32,
    /// Bytes of command data and unwritten responses all connections together may hold;
    /// beyond it commands wait (initiators see their window stall), memory does not grow.
    pub io_memory_max: u64,
    /// The most of `io_memory_max` the connections from one address may hold together, so
    /// one client cannot stall all others; unset: half of `io_memory_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_memory_per_address_max: Option<u64>,
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

/// Upper bound of `server.workers`.
pub const MAX_WORKERS: u32 = 1024;

impl ServerConfig {
    /// What the connections of one address may hold of the I/O memory pool.
    pub fn io_memory_per_address_max(&self) -> u64 {
        self.io_memory_per_address_max.unwrap_or(self.io_memory_max / 2)
    }

    /// The runtime's worker threads: `workers`, or half of `cpus` (at least one) when 0.
    ///
    /// Why not one per CPU, tokio's default: a connection that busy-polls puts its task back in
    /// the runtime's queue at every poll, and an idle worker is woken to steal it, so workers
    /// pass connections between them and sleep and wake thousands of times a second. On 2 CPUs
    /// shared with a local initiator, one worker against two (libiscsi, 4 KiB, file LU): random
    /// writes at QD32 136k IOPS against 99k, 8 sessions x QD4 156k against 94k, 64 sessions x
    /// QD1 86k against 71k, QD1 p50 21 µs against 29 µs; random reads at QD32 177k against
    /// 135k. Half the CPUs also leaves the other half to the kernel's network and page-cache
    /// work, the store's I/O threads and whatever else the host runs.
    pub fn worker_threads(&self, cpus: usize) -> usize {
        match self.workers {
            0 => (cpus / 2).max(1),
            n => n as usize,
        }
    }
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
            data_out_timeout_secs: conn.data_out_timeout.as_secs(),
            max_transfer_bytes: conn.max_transfer_bytes,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            workers: 0,
            io_memory_max: crate::iscsi::memory::DEFAULT_IO_MEMORY,
            io_memory_per_address_max: None,
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
                data_out_timeout: Duration::from_secs(s.data_out_timeout_secs),
                max_transfer_bytes: s.max_transfer_bytes,
                memory: Arc::new(crate::iscsi::memory::IoMemory::with_share(
                    s.io_memory_max,
                    s.io_memory_per_address_max(),
                ))
                .unshared(),
                ..ConnConfig::default()
            },
            busy_poll: Duration::from_micros(s.busy_poll_us),
            pollers: Arc::new(crate::server::pollers::PollerSlots::new(
                s.worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            )),
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

/// The bucket of the embedded default volume.
pub const DEFAULT_BUCKET: &str = "rtgt";

/// The target of the embedded default configuration.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.dev.rtgt:default";

/// `$RTGT_DATA_DIR`, or `./rtgt-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("RTGT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("rtgt-data"))
}

#[cfg(test)]
mod tests;
