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

pub const REGION: &str = "us-east-1";

/// Where a store keeps its credentials (a reserved name: never an object or a bucket).
pub const CREDENTIALS_FILE: &str = ".rtgt-credentials";

/// The credentials of an embedded store's HTTP endpoint: made at random for each store
/// directory the first time, kept there readable by its owner only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key", &self.access_key).finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials of the store at `root`, if it has any.
    pub fn read(root: &Path) -> Option<Credentials> {
        let text = std::fs::read_to_string(root.join(CREDENTIALS_FILE)).ok()?;
        let mut lines = text.lines();
        let (access_key, secret_key) = (lines.next()?.trim().to_string(), lines.next()?.trim().to_string());
        (!access_key.is_empty() && !secret_key.is_empty()).then_some(Credentials { access_key, secret_key })
    }

    /// The credentials of the store at `root`, made (random, mode 0600) if missing.
    pub fn load_or_create(root: &Path) -> Result<Credentials, String> {
        use crate::private_file::{create, random_hex};
        if let Some(c) = Credentials::read(root) {
            return Ok(c);
        }
        let c = Credentials { access_key: format!("rtgt-{}", random_hex(8)?), secret_key: random_hex(24)? };
        create(&root.join(CREDENTIALS_FILE), &format!("{}\n{}\n", c.access_key, c.secret_key))?;
        Ok(c)
    }
}

/// Opens the local store at `root` on the real filesystem.
pub fn open_root(root: &Path) -> Result<Arc<LocalRoot>, String> {
    // Entity tags only need to differ between versions of a key, across restarts too.
    #[allow(clippy::disallowed_methods)] // production only: the simulation opens its own root
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    LocalRoot::open(
        Arc::new(StdFs),
        root,
        LocalOptions {
            offload: Offload::BlockingPool,
            etag_seed: seed as u64,
            durable: true,
            remember_clean_close: true,
        },
    )
}

/// A running HTTP endpoint of the embedded store.
pub struct EmbeddedS3 {
    pub addr: SocketAddr,
    credentials: Credentials,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The S3 service of a local store.
pub fn service(root: Arc<LocalRoot>, credentials: &Credentials) -> S3Service {
    let mut builder = S3ServiceBuilder::new(LocalService::new(root));
    builder.set_auth(SimpleAuth::from_single(credentials.access_key.as_str(), credentials.secret_key.as_str()));
    builder.build()
}

impl EmbeddedS3 {
    /// Serves the store at `root` over HTTP on `addr` with the store's own credentials
    /// (`given` instead, when set). A non-loopback address needs `given`: the generated ones
    /// sit in a file anyone with the directory could read.
    pub async fn start(root: Arc<LocalRoot>, addr: SocketAddr) -> Result<EmbeddedS3, String> {
        EmbeddedS3::start_with(root, addr, None).await
    }

    pub async fn start_with(
        root: Arc<LocalRoot>,
        addr: SocketAddr,
        given: Option<Credentials>,
    ) -> Result<EmbeddedS3, String> {
        if !addr.ip().is_loopback() && given.is_none() {
            return Err(format!(
                "embedded S3: {addr} is not a loopback address; set its credentials (embedded_s3.access_key and \
                 secret_key) to expose it"
            ));
        }
        let credentials = match given {
            Some(c) => c,
            None => Credentials::load_or_create(root.path())?,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("embedded S3 cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shown = root.path().display().to_string();
        let service = service(root, &credentials);
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
        Ok(EmbeddedS3 { addr, credentials, task })
    }

    pub fn endpoint(&self) -> Endpoint {
        endpoint_for(self.addr, &self.credentials)
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

/// How to reach an embedded server at `addr`.
pub fn endpoint_for(addr: SocketAddr, credentials: &Credentials) -> Endpoint {
    Endpoint {
        url: Some(format!("http://{addr}")),
        region: Some(REGION.into()),
        path_style: true,
        access_key_id: Some(credentials.access_key.clone()),
        secret_access_key: Some(credentials.secret_key.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn each_store_gets_its_own_credentials_and_stays_on_loopback_without_given_ones() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let server = EmbeddedS3::start(open_root(a.path()).unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let first = server.credentials().clone();
        assert_eq!(Credentials::read(a.path()), Some(first.clone()), "kept in the store");
        let mode = std::fs::metadata(a.path().join(CREDENTIALS_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(Credentials::load_or_create(b.path()).unwrap(), first, "another store, other credentials");
        assert!(!format!("{first:?}").contains(&first.secret_key), "never printed");
        drop(server);
        let c = tempfile::tempdir().unwrap();
        let open = EmbeddedS3::start(open_root(c.path()).unwrap(), "0.0.0.0:0".parse().unwrap()).await;
        assert!(open.err().unwrap().contains("loopback"));
        let given = Credentials { access_key: "k".into(), secret_key: "s".repeat(20) };
        let open =
            EmbeddedS3::start_with(open_root(c.path()).unwrap(), "0.0.0.0:0".parse().unwrap(), Some(given)).await;
        assert!(open.is_ok());
    }
}
