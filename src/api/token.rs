//! The API's bearer token when the configuration sets none: generated on first start, kept in
//! the data directory readable by its owner only, and read from there by the CLI.

use std::path::{Path, PathBuf};

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "api-token";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// The token stored in `data_dir`, if there is one.
pub fn read(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// The token stored in `data_dir`, created (32 random bytes, hex, mode 0600) if missing.
pub fn load_or_create(data_dir: &Path) -> Result<String, String> {
    if let Some(token) = read(data_dir) {
        return Ok(token);
    }
    let token = crate::private_file::random_hex(32)?;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    crate::private_file::create(&path(data_dir), &format!("{token}\n"))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_token_is_made_once_and_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create(dir.path()).unwrap(), token, "kept across starts");
        assert_eq!(read(dir.path()), Some(token));
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
