//! The local store behind the network emulator (`rtgt-bench s3-remote`): the S3 benchmarks'
//! store at a distance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Watched, wait_for_port};
use crate::{free_port, root};

/// The bucket `rtgt-bench s3-remote` makes.
pub(crate) const REMOTE_BUCKET: &str = "bench";

/// A running `rtgt-bench s3-remote`, its files in memory where there is a tmpfs (a remote
/// store's fsyncs do not share the target's disk); they are removed when it stops or is dropped.
pub(crate) struct RemoteStore {
    process: Watched,
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl RemoteStore {
    /// Starts one `rtt_ms` away, at most `mbit` Mbit/s each way (0: no cap); its log in `log_dir`.
    pub(crate) fn start(log_dir: &Path, rtt_ms: u64, mbit: u64) -> Result<RemoteStore, String> {
        let shm = Path::new("/dev/shm");
        let name = format!("rtgt-bench-store-{}", std::process::id());
        let dir = if shm.is_dir() { shm.join(name) } else { log_dir.join(name) };
        let _ = std::fs::remove_dir_all(&dir);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
        let args = [
            "s3-remote".to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
            "--listen".to_string(),
            addr.to_string(),
            "--rtt-ms".to_string(),
            rtt_ms.to_string(),
            "--mbit".to_string(),
            mbit.to_string(),
        ];
        let log = log_dir.join("store.log");
        let bench = root().join("target/release/rtgt-bench");
        let process = Watched::spawn("the store", &bench, &args, &log, &[("RUST_LOG", "warn")])?;
        // Made now, so that the files go even if it never listens.
        let store = RemoteStore { process, addr, dir };
        wait_for_port(addr, &store.process, &log)?;
        Ok(store)
    }

    /// The `endpoint` value of a LUN on it, with the lines of its region and credentials.
    pub(crate) fn lun_endpoint(&self) -> String {
        format!(
            "\"http://{}\"\nregion = \"us-east-1\"\naccess_key_id = \"bench\"\nsecret_access_key = \"bench-secret-key\"",
            self.addr
        )
    }

    /// A clean stop.
    pub(crate) fn stop(self, within: Duration) -> Result<(), String> {
        self.process.terminate(within)
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
