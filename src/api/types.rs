//! The management API's request and response bodies, as types: the server builds them, the CLI
//! reads them, and the OpenAPI document ([`super::doc`]) is generated from them, so the three
//! cannot drift apart.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::{ChapConfig, LunConfig, Size};
use crate::iscsi::params::Params;
use crate::scsi::metrics::MetricsSnapshot;
use crate::storage::StoreStats;

/// Every error: `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Version {
    /// "rtgt".
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
}

/// A target as the API shows it: its configuration (CHAP secrets left out), its LUNs as they
/// are served, and how many sessions are logged in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TargetView {
    pub name: String,
    pub alias: Option<String>,
    /// The portal groups it is served on (every group when the configuration names none).
    pub portal_groups: Vec<u16>,
    pub luns: Vec<LunView>,
    pub sessions: usize,
    /// Who may log in (null: anyone).
    pub allowed_initiators: Option<Vec<String>>,
    pub allowed_addresses: Option<Vec<String>>,
    /// Who may reset the whole target (null: the default rule).
    pub reset_initiators: Option<Vec<String>>,
    /// The CHAP user initiators must log in as, if CHAP is required.
    pub chap_user: Option<String>,
}

/// A LUN: its configuration (the S3 secret key left out) and, once open, its geometry and
/// store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LunView {
    pub lun: u16,
    pub backend: crate::config::Backend,
    /// Bytes, while the LUN is served.
    pub size: Option<u64>,
    pub block_size: Option<u32>,
    /// What the store is (a file's path, an S3 volume's URL), while the LUN is served.
    pub store: Option<String>,
    pub config: LunConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortalGroupView {
    pub tag: u16,
    /// The configured addresses.
    pub portals: Vec<String>,
    /// The addresses it listens on now.
    pub listening: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Normal,
    Discovery,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    pub peer: String,
    pub local: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionCounters {
    pub commands: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub tsih: u16,
    pub kind: SessionKind,
    pub initiator: String,
    /// 12 hex digits.
    pub isid: String,
    /// Null for a discovery session.
    pub target: Option<String>,
    pub tpgt: u16,
    pub connections: Vec<ConnectionView>,
    /// The negotiated operational parameters.
    pub params: Params,
    pub counters: SessionCounters,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub sessions: usize,
    pub luns: Vec<LunStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LunStats {
    pub target: String,
    pub lun: u16,
    pub store: String,
    /// Commands, errors, latencies and bytes, per class of command.
    pub scsi: MetricsSnapshot,
    /// The store's own counters.
    pub backend: StoreStats,
}

// ---------------------------------------------------------------- requests

/// `POST /v1/targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    /// An iqn., eui. or naa. name.
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// Absent: every portal group.
    #[serde(default)]
    pub portal_groups: Option<Vec<u16>>,
}

/// `PUT /v1/targets/{name}/portal-groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalGroupBinding {
    pub portal_groups: Vec<u16>,
}

/// `PUT /v1/targets/{name}/auth`: the CHAP secrets initiators must prove (null: none). The
/// secrets are stored in the configuration (mode 0600), never returned.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthChange {
    pub chap: Option<ChapConfig>,
}

/// `PUT /v1/targets/{name}/acl`: who may log in (absent or null lists: anyone), and who may
/// reset the whole target.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AclChange {
    #[serde(default)]
    pub allowed_initiators: Option<Vec<String>>,
    /// Addresses or networks ("10.0.0.0/8").
    #[serde(default)]
    pub allowed_addresses: Option<Vec<String>>,
    /// Who may reset the whole target (absent: anyone on an open target, else nobody).
    #[serde(default)]
    pub reset_initiators: Option<Vec<String>>,
}

/// `POST /v1/targets/{name}/luns/{lun}/grow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grow {
    pub size: Size,
}

/// `POST /v1/portal-groups/{tag}/portals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortal {
    /// host:port.
    pub portal: String,
}

/// `POST /v1/targets/{name}/luns/{lun}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    pub name: crate::storage::snapshots::SnapshotName,
}

/// `?force=true`.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Force {
    /// Log the target's sessions out first.
    #[serde(default)]
    pub force: bool,
}
