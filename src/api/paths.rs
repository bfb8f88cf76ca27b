//! Where LUNs created through the API may live: files under the data directory or under a
//! directory of `server.allowed_paths`, block devices only when listed there by name. So a
//! holder of the API token cannot export `/etc/shadow` or a disk the host uses.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// The canonical form of `path` as far as it exists (symbolic links followed), the rest as
/// written. Paths with `..` are refused before this.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolve(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// Checks a LUN's backing path (relative paths are under `data_dir`).
pub fn check_lun_path(path: &Path, data_dir: &Path, allowed: &[PathBuf]) -> Result<(), String> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("path: {} contains \"..\"", path.display()));
    }
    let full = if path.is_absolute() { path.to_path_buf() } else { data_dir.join(path) };
    let real = resolve(&full);
    let is_device =
        std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device() || m.file_type().is_char_device());
    if is_device {
        return match allowed.iter().any(|a| resolve(a) == real) {
            true => Ok(()),
            false => Err(format!("path: the device {} is not listed in server.allowed_paths", real.display())),
        };
    }
    let roots = std::iter::once(data_dir).chain(allowed.iter().map(PathBuf::as_path));
    match roots.map(resolve).any(|root| real.starts_with(&root) && real != root) {
        true => Ok(()),
        false => Err(format!(
            "path: {} is outside the data directory {} and server.allowed_paths",
            real.display(),
            data_dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_under_the_data_directory_or_allowed_ones() {
        let data = tempfile::tempdir().unwrap();
        let extra = tempfile::tempdir().unwrap();
        let allowed = [extra.path().to_path_buf()];
        let check = |p: &str| check_lun_path(Path::new(p), data.path(), &allowed);
        assert!(check("disk.img").is_ok());
        assert!(check("sub/disk.img").is_ok());
        assert!(check(&extra.path().join("x.img").display().to_string()).is_ok());
        assert!(check(&data.path().join("a.img").display().to_string()).is_ok());
        for bad in ["/etc/shadow", "../escape.img", "sub/../../escape.img", "/dev/sda", "/dev/null"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        // A symbolic link out of the data directory is followed, and refused.
        std::os::unix::fs::symlink("/etc", data.path().join("etc")).unwrap();
        assert!(check("etc/passwd").is_err());
        // A device listed by name is fine.
        assert!(check_lun_path(Path::new("/dev/null"), data.path(), &[PathBuf::from("/dev/null")]).is_ok());
    }
}
