//! The embedded S3 server: s3s-fs serving a directory over HTTP on loopback, so that
//! `rtgt serve` has an object store to put its default volume in with no set-up.

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

use super::aws::Endpoint;

/// Credentials of the embedded server. It listens on loopback only by default; anyone who can
/// reach it can use these.
pub const ACCESS_KEY: &str = "rtgt";
pub const SECRET_KEY: &str = "rtgt-embedded-secret";
pub const REGION: &str = "us-east-1";

/// A running embedded S3 server.
pub struct EmbeddedS3 {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The S3 service over a directory (each subdirectory is a bucket).
pub fn service(root: &Path) -> Result<S3Service, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| format!("cannot serve {}: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    Ok(builder.build())
}

/// Creates a bucket directory directly (the server treats directories as buckets).
pub fn ensure_bucket(root: &Path, bucket: &str) -> Result<(), String> {
    let dir = root.join(bucket);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

impl EmbeddedS3 {
    pub async fn start(root: &Path, addr: SocketAddr) -> Result<EmbeddedS3, String> {
        let service = service(root)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("embedded S3 cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
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
        tracing::info!(%addr, root = %root.display(), "embedded S3 server listening");
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
