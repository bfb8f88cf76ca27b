//! The API's bearer token when the configuration sets none: generated on first start, kept in
//! the data directory readable by its owner only, and read from there by the CLI.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot generate the API token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let file = path(data_dir);
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", file.display()))?;
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
