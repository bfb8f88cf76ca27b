//! `backend = "..."` of a `[[target.lun]]`: what stores the LUN's blocks, as a type. A name
//! rtgt does not know parses too (as `Unknown`), so that validation reports it beside every
//! other problem of the file instead of stopping at the first.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Blocks in memory, lost at exit.
    Memory,
    /// A regular file or block device, positioned I/O on the store's own threads.
    File,
    /// A regular file or block device through io_uring.
    Uring,
    /// Reads zeros, discards writes.
    Null,
    /// A sparse volume of chunk objects in S3-compatible storage.
    S3,
    /// A name rtgt does not know (refused by validation).
    Unknown(String),
}

impl Backend {
    /// Every backend rtgt knows, in the order the documentation lists them.
    pub const KNOWN: [Backend; 5] = [Backend::Memory, Backend::File, Backend::Uring, Backend::Null, Backend::S3];

    pub fn parse(name: &str) -> Backend {
        Backend::KNOWN.into_iter().find(|b| b.name() == name).unwrap_or_else(|| Backend::Unknown(name.to_string()))
    }

    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        match self {
            Backend::Memory => "memory",
            Backend::File => "file",
            Backend::Uring => "uring",
            Backend::Null => "null",
            Backend::S3 => "s3",
            Backend::Unknown(name) => name,
        }
    }

    /// A file or block device (`path`).
    pub fn is_file(&self) -> bool {
        matches!(self, Backend::File | Backend::Uring)
    }

    /// "memory, file, uring, null or s3", for messages.
    pub fn known_names() -> String {
        let names: Vec<&str> = Backend::KNOWN.iter().map(Backend::name).collect();
        format!("{} or {}", names[..names.len() - 1].join(", "), names[names.len() - 1])
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<&str> for Backend {
    fn from(name: &str) -> Backend {
        Backend::parse(name)
    }
}

impl Serialize for Backend {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
        Ok(Backend::parse(&String::deserialize(d)?))
    }
}

/// In the API: one of the known names.
impl utoipa::PartialSchema for Backend {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let names: Vec<&str> = Backend::KNOWN.iter().map(Backend::name).collect();
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).into()
    }
}

impl utoipa::ToSchema for Backend {
    fn name() -> std::borrow::Cow<'static, str> {
        "Backend".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_kept() {
        for b in Backend::KNOWN {
            assert_eq!(Backend::parse(b.name()), b);
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{}\"", b.name()));
        }
        let tape: Backend = serde_json::from_str("\"tape\"").unwrap();
        assert_eq!(tape, Backend::Unknown("tape".into()));
        assert_eq!(serde_json::to_string(&tape).unwrap(), "\"tape\"");
        assert_eq!(Backend::known_names(), "memory, file, uring, null or s3");
    }
}
