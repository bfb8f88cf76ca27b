//! Objects left by s3s-fs, the embedded store of rtgt before the local store: a plain data file
//! at `<root>/<bucket>/<key>` and its metadata beside the buckets in
//! `.bucket-<b64(bucket)>.object-<b64(key)>.metadata.json` (`.internal.json` too). At the first
//! open they are converted in place: each becomes one object file (durably, with the same
//! rename as any PUT), then the side files go. A data file whose metadata never got written (a
//! crash between s3s-fs's two renames) becomes an object without metadata; the volume decides
//! what such an object is worth.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::object_file::MAGIC;
use super::{LocalRoot, TEMP_PREFIX, fs};
use crate::s3::Condition;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The user metadata s3s-fs kept for an object: `{"user_metadata": {...}, ...}`, or a plain map
/// in its oldest format.
fn user_metadata(json: &[u8]) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Attributes {
        user_metadata: Option<BTreeMap<String, String>>,
    }
    if let Ok(a) = serde_json::from_slice::<Attributes>(json)
        && let Some(m) = a.user_metadata
    {
        return m;
    }
    serde_json::from_slice::<BTreeMap<String, String>>(json).unwrap_or_default()
}

/// Converts every s3s-fs object under the root; removes s3s-fs's side and temporary files.
pub(super) fn convert(root: &LocalRoot) -> io::Result<()> {
    let mut converted = 0usize;
    for bucket in root.buckets() {
        let bucket_dir = root.root.join(&bucket);
        let mut files = Vec::new();
        collect(root, &bucket_dir, &mut files)?;
        for path in files {
            let head = fs::read_exact_at(&*root.fs.open(&path)?, 0, MAGIC.len())?;
            if head == MAGIC {
                continue;
            }
            let key = path.strip_prefix(&bucket_dir).expect("below the bucket").to_string_lossy().into_owned();
            let side = root.root.join(format!(".bucket-{}.object-{}.metadata.json", b64(&bucket), b64(&key)));
            let metadata = match root.fs.open(&side) {
                Ok(f) => user_metadata(&fs::read_exact_at(&*f, 0, f.size() as usize)?),
                Err(_) => {
                    tracing::warn!(object = %path.display(), "s3s-fs object without metadata (a torn write): kept without it");
                    BTreeMap::new()
                }
            };
            let file = root.fs.open(&path)?;
            let body = fs::read_exact_at(&*file, 0, file.size() as usize)?;
            root.put_file(&path, &body, metadata, &Condition::None, &super::Caller::default())
                .map_err(io::Error::other)?;
            converted += 1;
        }
    }
    // s3s-fs's side files and temporaries live in the root.
    let mut removed = false;
    for e in root.fs.read_dir(&root.root)? {
        let s3s_fs_file = e.name.starts_with(".bucket-") && e.name.ends_with(".json")
            || e.name.starts_with(".tmp.") && e.name.ends_with(".internal.part")
            || e.name.starts_with(".upload_id-");
        if !e.is_dir && s3s_fs_file {
            root.fs.remove_file(&root.root.join(&e.name))?;
            removed = true;
        }
    }
    if removed {
        root.fs.sync_dir(&root.root)?;
    }
    if converted > 0 {
        tracing::info!(root = %root.root.display(), objects = converted, "converted the objects of s3s-fs to the local store's format");
    }
    Ok(())
}

fn collect(root: &LocalRoot, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in root.fs.read_dir(dir)? {
        let path = dir.join(&e.name);
        if e.is_dir {
            collect(root, &path, out)?;
        } else if !e.name.starts_with(TEMP_PREFIX) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_metadata_formats() {
        assert_eq!(user_metadata(br#"{"user_metadata":{"a":"1"},"content_type":"x"}"#)["a"], "1");
        assert_eq!(user_metadata(br#"{"b":"2"}"#)["b"], "2");
        assert!(user_metadata(b"garbage").is_empty());
    }
}
