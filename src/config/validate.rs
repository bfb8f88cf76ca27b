//! Validation of a whole configuration: every problem is reported at once, each with the path
//! of the field it concerns.

use super::*;

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
        if s.workers > MAX_WORKERS {
            problems.push(format!("server.workers: at most {MAX_WORKERS} (0: half the CPUs)"));
        }
        if s.nop_interval_secs == 0 || s.nop_timeout_secs == 0 || s.data_out_timeout_secs == 0 {
            problems
                .push("server.nop_interval_secs / nop_timeout_secs / data_out_timeout_secs: must be at least 1".into());
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
        if s.io_memory_per_address_max
            .is_some_and(|share| share < s.max_transfer_bytes as u64 || share > s.io_memory_max)
        {
            problems.push(
                "server.io_memory_per_address_max: must hold at least one transfer (max_transfer_bytes) and at most io_memory_max"
                    .into(),
            );
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
        // A file by device and inode too: a hard link is another path to the same file.
        let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
        let mut identities: BTreeMap<u64, String> = BTreeMap::new();
        let mut volumes: BTreeMap<(String, String), String> = BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let at = format!("target[{i}] ({})", t.name);
            if let Err(e) = validate_iscsi_name(&t.name) {
                problems.push(format!("{at}.name: {e}"));
            }
            // iSCSI names compare without case (RFC 3722): initiators may send either.
            if !names.insert(t.name.to_ascii_lowercase()) {
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
                if let Some(Ok(naa)) = l.naa.as_deref().map(parse_naa)
                    && let Some(other) = identities.insert(naa, at.clone())
                {
                    problems.push(format!(
                        "{at}.naa: {naa:#018x} is already the identity of {other}; two LUNs with one identity look \
                         like one disk to multipath and share persistent reservations"
                    ));
                }
                if let Some(path) = self.lun_path(l) {
                    let key = std::fs::canonicalize(&path).unwrap_or(path);
                    if let Some(other) = backing.insert(key.clone(), at.clone()) {
                        problems.push(format!(
                            "{at}.path: {} is already the backing of {other}; two LUNs on one file would corrupt it",
                            key.display()
                        ));
                    } else if let Some(other) =
                        std::fs::metadata(&key).ok().and_then(|m| inodes.insert(file_id(&m), at.clone()))
                    {
                        problems.push(format!(
                            "{at}.path: {} is the backing of {other} under another name (a hard link, another device \
                             node); two LUNs on one file would corrupt it",
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
}

/// What makes a file one file whatever its name: its device and inode, or for a device node
/// the device it stands for.
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match m.file_type().is_block_device() || m.file_type().is_char_device() {
        true => (u64::MAX, m.rdev()),
        false => (m.dev(), m.ino()),
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
