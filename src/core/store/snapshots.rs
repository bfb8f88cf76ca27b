//! Point-in-time snapshots, as a store that takes them offers them (an S3 volume of format
//! 3): the seam the management API uses, with no knowledge of how a store keeps them.

use serde::{Deserialize, Serialize};

use super::BoxFuture;

/// Longest snapshot name.
const NAME_MAX: usize = 64;

/// A snapshot's name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot (so it is a plain
/// object name, and a URL's `@name` never needs escaping).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(String);

impl SnapshotName {
    pub fn parse(name: &str) -> Result<SnapshotName, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > NAME_MAX || name.starts_with('.') || !name.chars().all(allowed) {
            return Err(format!(
                "snapshot name {name:?}: 1 to {NAME_MAX} letters, digits, '.', '_' or '-', not starting with '.'"
            ));
        }
        Ok(SnapshotName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Splits `s3://bucket/volume@name` into the volume's URL and the snapshot's name.
    pub fn split_url(url: &str) -> Result<(&str, Option<SnapshotName>), String> {
        match url.rsplit_once('@') {
            Some((volume, name)) if !name.contains('/') => Ok((volume, Some(SnapshotName::parse(name)?))),
            _ => Ok((url, None)),
        }
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SnapshotName::parse(&s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}

impl std::fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is shown of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotSummary {
    pub name: SnapshotName,
    pub created_unix_secs: u64,
    /// The store's size when it was taken.
    pub size: u64,
    /// Chunks holding data in it.
    pub chunks: u64,
}

/// Why a snapshot operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The store cannot take snapshots (why, and what to do).
    #[error("{0}")]
    Unsupported(String),
    #[error("{store} already has a snapshot named {name}")]
    Exists { store: String, name: SnapshotName },
    #[error("{store} has no snapshot named {name}")]
    NotFound { store: String, name: SnapshotName },
    /// Clones read through to it: they go first.
    #[error("snapshot {name} of {store} has clones ({clones}), which read through to it: delete them first")]
    HasClones { store: String, name: SnapshotName, clones: String },
    #[error("{0}")]
    Failed(String),
}

/// A store that takes snapshots.
pub trait Snapshots: Send + Sync {
    /// Takes a crash-consistent snapshot named `name`.
    fn create_snapshot(&self, name: SnapshotName) -> BoxFuture<'_, Result<SnapshotSummary, SnapshotError>>;
    /// Deletes the snapshot `name`.
    fn delete_snapshot<'a>(&'a self, name: &'a SnapshotName) -> BoxFuture<'a, Result<(), SnapshotError>>;
    /// The snapshots, by name.
    fn snapshots(&self) -> Vec<SnapshotSummary>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_object_names() {
        for good in ["a", "daily-2026-12-05", "v1.2_x", &"n".repeat(64)] {
            assert!(SnapshotName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"n".repeat(65), "x@y"] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad}");
        }
        let name = SnapshotName::parse("s1").unwrap();
        assert_eq!(SnapshotName::split_url("s3://b/v@s1").unwrap(), ("s3://b/v", Some(name)));
        assert_eq!(SnapshotName::split_url("s3://b/v").unwrap(), ("s3://b/v", None));
        assert!(SnapshotName::split_url("s3://b/v@").is_err());
        assert!(serde_json::from_str::<SnapshotName>("\"a/b\"").is_err());
    }
}
