//! The embedded object store of `rtgt serve`: a [`LocalRoot`] the default target's volumes use
//! in-process, and the same store over HTTP on loopback (for `rtgt volume` commands and other
//! S3 tools), which `rtgt s3-server` also runs alone.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

use super::aws::Endpoint;
use super::http::LocalService;
use super::local::{LocalOptions, LocalRoot, Offload, StdFs};

/// Credentials of the embedded server. It listens on loopback only by default; anyone who can
/// reach it can use these.
pub const ACCESS_KEY: &str = "rtgt";
pub const SECRET_KEY: &str = "rtgt-embedded-secret";
pub const REGION: &str = "us-east-1";

/// Opens the local store at `root` on the real filesystem.
pub fn open_root(root: &Path) -> Result<Arc<LocalRoot>, String> {
    // Entity tags only need to differ between versions of a key, across restarts too.
    #[allow(clippy::disallowed_methods)] // production only: the simulation opens its own root
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    LocalRoot::open(Arc::new(StdFs), root, LocalOptions { offload: Offload::BlockingPool, etag_seed: seed as u64 })
}

/// A running HTTP endpoint of the embedded store.
pub struct EmbeddedS3 {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The S3 service of a local store.
pub fn service(root: Arc<LocalRoot>) -> S3Service {
    let mut builder = S3ServiceBuilder::new(LocalService::new(root));
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    builder.build()
}

impl EmbeddedS3 {
    pub async fn start(root: Arc<LocalRoot>, addr: SocketAddr) -> Result<EmbeddedS3, String> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("embedded S3 cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shown = root.path().display().to_string();
        let service = service(root);
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let _ = socket.set_nodelay(true);
                let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        tracing::info!(%addr, root = %shown, "embedded S3 endpoint listening");
        Ok(EmbeddedS3 { addr, task })
    }

    pub fn endpoint(&self) -> Endpoint {
        endpoint_for(self.addr)
    }
}

/// How to reach an embedded server at `addr`.
pub fn endpoint_for(addr: SocketAddr) -> Endpoint {
    Endpoint {
        url: Some(format!("http://{addr}")),
        region: Some(REGION.into()),
        path_style: true,
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
    }
}
