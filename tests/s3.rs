//! S3 volumes through the real S3 client path: aws-sdk-s3 against the local store over
//! loopback HTTP, against s3s-fs (a second implementation) in-process through the
//! testkit's connector, and against moto (a third, in Python: `pip install 'moto[server]'`) over HTTP,
//! each with a volume's life and with snapshots, a clone and garbage collection;
//! the local store converting what s3s-fs left; and a target serving an S3 volume to libiscsi
//! across a restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rtgt::clock::TokioClock;
use rtgt::config::{BuildContext, Config};
use rtgt::node::NodeId;
use rtgt::s3::aws::{AwsStore, Endpoint, sdk_config};
use rtgt::s3::embedded::{self, EmbeddedS3};
use rtgt::s3::local::LocalRoot;
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::clone::clone_volume;
use rtgt::s3::volume::manifest::SnapshotName;
use rtgt::s3::volume::{CreateSpec, S3Volume, SnapshotView, VolumeOptions, delete_volume};
use rtgt::s3::{ObjectStore, list_all};
use rtgt::server::{Registry, Server, TokioNet};
use rtgt::storage::BlockStore;

const CHUNK: u64 = 1 << 20;

fn options(holder: &str) -> VolumeOptions {
    VolumeOptions {
        create: Some(CreateSpec { size: 16 * CHUNK, block_size: 512, chunk_size: CHUNK }),
        holder: holder.into(),
        // Renewed every second: a second target sees the first one alive quickly.
        lease_duration: Duration::from_secs(3),
        ..VolumeOptions::default()
    }
}

/// Options of a target that restarts on one data directory (its node): it takes the lease it
/// abandoned back at once instead of waiting it out.
fn restarting_node_options(holder: &str) -> VolumeOptions {
    VolumeOptions { node: Some(NodeId::new("node-1")), ..options(holder) }
}

async fn open(store: &Arc<AwsStore>, holder: &str) -> Result<Arc<S3Volume>, String> {
    let url = S3Url::parse("s3://vols/disk").unwrap();
    S3Volume::open(store.clone(), url, options(holder), Arc::new(TokioClock::new())).await.map_err(|e| e.to_string())
}

/// Exercises a volume over a store: ranged reads, zero elision, unmap, reopen, a second writer.
async fn exercise(store: Arc<AwsStore>) {
    let chunk_keys = || async { list_all(&*store, "disk/chunks/").await.unwrap() };
    let v = open(&store, "first").await.unwrap();
    let data: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8 + 1).collect();
    v.write(CHUNK, Bytes::from(data.clone()), false).await.unwrap();
    v.write(3 * CHUNK, Bytes::from(vec![0u8; CHUNK as usize]), false).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(chunk_keys().await.len(), 1, "the all-zero chunk is not stored");

    // A second target (another node) may not open it: the first keeps renewing its lease.
    let err = open(&store, "second").await.err().unwrap();
    assert!(err.contains("in use by first"), "{err}");

    // Reopen (after a clean close): a 4 KiB read is a ranged GET, not the whole chunk.
    v.close().await.unwrap();
    drop(v);
    let v = open(&store, "first").await.unwrap();
    let down = v.s3_stats().bytes_down.load(Ordering::Relaxed);
    let at = CHUNK + 300 * 1024;
    assert_eq!(v.read(at, 4096).await.unwrap(), &data[300 * 1024..300 * 1024 + 4096]);
    let fetched = v.s3_stats().bytes_down.load(Ordering::Relaxed) - down;
    assert!(fetched > 0 && fetched < CHUNK / 4, "ranged read fetched {fetched} bytes");

    // UNMAP frees the chunk's data (a tombstone, an empty object, stays); it reads as zeros.
    v.unmap(0, 4 * CHUNK).await.unwrap();
    assert_eq!(v.read(CHUNK, 4096).await.unwrap(), vec![0u8; 4096]);
    v.close().await.unwrap();
    let left: Vec<u64> = chunk_keys().await.iter().map(|l| l.size).collect();
    assert_eq!(left, vec![0], "only the tombstone is left");
}

/// Snapshots, a clone and garbage collection over a store: a snapshot of dirty data, the volume
/// changed and swept, the snapshot read alone, a clone reading through to it and writing its own,
/// the snapshot kept while the clone exists, then deleted and swept down to what the volume holds.
async fn exercise_snapshots(store: Arc<AwsStore>) {
    let url = S3Url::parse("s3://vols/snapped").unwrap();
    let clock = Arc::new(TokioClock::new());
    let open = |url: &S3Url| S3Volume::open(store.clone(), url.clone(), options("first"), clock.clone());
    let pattern = |salt: u8| Bytes::from((0..CHUNK).map(|i| (i % 249) as u8 ^ salt).collect::<Vec<u8>>());
    let v = open(&url).await.unwrap();
    // Still in the cache when the snapshot is taken: it must merge them first.
    v.write(CHUNK, pattern(0x11), false).await.unwrap();
    v.write(2 * CHUNK, pattern(0x22), false).await.unwrap();
    let name = SnapshotName::parse("one").unwrap();
    v.create_snapshot(name.clone()).await.unwrap();
    v.write(CHUNK, pattern(0x33), false).await.unwrap();
    v.unmap(2 * CHUNK, CHUNK).await.unwrap();
    v.flush().await.unwrap();
    v.collect_garbage().await;
    assert_eq!(v.read(CHUNK, CHUNK as usize).await.unwrap(), pattern(0x33));
    assert_eq!(v.read(2 * CHUNK, 4096).await.unwrap(), vec![0u8; 4096]);

    let snapshot = SnapshotView::open(store.clone(), &url, &name, None).await.unwrap();
    assert_eq!(snapshot.read(CHUNK, CHUNK as usize).await.unwrap(), pattern(0x11), "the snapshot's chunk 1");
    assert_eq!(snapshot.read(2 * CHUNK, CHUNK as usize).await.unwrap(), pattern(0x22), "the snapshot's chunk 2");

    let child = S3Url::parse("s3://vols/cloned").unwrap();
    clone_volume(&*store, &url, &name, &child, &*clock, 7).await.unwrap();
    let c = open(&child).await.unwrap();
    assert_eq!(c.read(2 * CHUNK, CHUNK as usize).await.unwrap(), pattern(0x22), "the clone reads through");
    c.write(CHUNK, pattern(0x44), true).await.unwrap();
    c.close().await.unwrap();
    drop(c);
    let err = v.delete_snapshot(&name).await.unwrap_err().to_string();
    assert!(err.contains("clone"), "{err}");
    assert_eq!(snapshot.read(CHUNK, CHUNK as usize).await.unwrap(), pattern(0x11), "the clone's write stays its own");
    let c = open(&child).await.unwrap();
    assert_eq!(c.read(CHUNK, CHUNK as usize).await.unwrap(), pattern(0x44));
    c.close().await.unwrap();
    drop(c);

    delete_volume(store.clone(), &child, false, clock.clone(), "first".into()).await.unwrap();
    v.delete_snapshot(&name).await.unwrap();
    v.collect_garbage().await;
    v.close().await.unwrap();
    // One version of chunk 1 and the tombstone of chunk 2 are left.
    let mut sizes: Vec<u64> = list_all(&*store, "snapped/chunks/").await.unwrap().iter().map(|l| l.size).collect();
    sizes.sort();
    assert_eq!(sizes.len(), 2, "what is left of the chunks: {sizes:?}");
    assert_eq!(sizes[0], 0, "the tombstone: {sizes:?}");
    assert!(list_all(&*store, "cloned/").await.unwrap().is_empty(), "the clone is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_over_loopback_http() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, aws) = loopback_store(dir.path(), "vols").await;
    exercise(Arc::new(aws)).await;
}

/// The local store (bucket "vols") served over loopback HTTP in `dir`, and a client of its
/// `bucket` (which may not exist).
async fn loopback_store(dir: &std::path::Path, bucket: &str) -> (EmbeddedS3, AwsStore) {
    let root = embedded::open_root(dir).unwrap();
    root.create_bucket("vols").unwrap();
    let server = EmbeddedS3::start(root, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let aws = AwsStore::connect(&server.endpoint(), bucket).await;
    (server, aws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_gc_over_loopback_http() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, aws) = loopback_store(dir.path(), "vols").await;
    exercise_snapshots(Arc::new(aws)).await;
}

/// A volume created in a bucket the store does not have: the error names the bucket (the
/// store's answer, 404, alone said "no such object").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_volume_in_a_missing_bucket_names_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, aws) = loopback_store(dir.path(), "elsewhere").await;
    let store = Arc::new(aws);
    let url = S3Url::parse("s3://elsewhere/disk").unwrap();
    let err =
        S3Volume::open(store, url, options("first"), Arc::new(TokioClock::new())).await.err().unwrap().to_string();
    assert!(err.contains("no bucket \"elsewhere\""), "{err}");
}

/// moto's S3 server on a free loopback port, killed on drop. Fails loudly without moto.
struct Moto {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("moto_server cannot start ({e}): install it with pip install 'moto[server]'"));
    let moto = Moto { child, addr: format!("127.0.0.1:{port}").parse().unwrap() };
    // Ready once it accepts connections (it takes a second or two to start).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(moto.addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "moto_server did not listen on {} within 60 s", moto.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    moto
}

async fn moto_client(moto: &Moto, bucket: &str) -> AwsStore {
    let credentials = embedded::Credentials { access_key: "testing".into(), secret_key: "testing".into() };
    let aws = AwsStore::connect(&embedded::endpoint_for(moto.addr, &credentials), bucket).await;
    aws.ensure_bucket().await.unwrap();
    aws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_against_moto() {
    let moto = start_moto().await;
    exercise(Arc::new(moto_client(&moto, "vols").await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_gc_against_moto() {
    let moto = start_moto().await;
    exercise_snapshots(Arc::new(moto_client(&moto, "vols").await)).await;
}

/// The disk cache relies on a chunk's entity tag being the same in a PUT's answer, a LIST and
/// a GET: against moto, reads after a restart come from the disk cache with no GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_finds_its_versions_on_moto() {
    let moto = start_moto().await;
    let store = Arc::new(moto_client(&moto, "vols").await);
    let cache_dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::new();
    let url = S3Url::parse("s3://vols/cached").unwrap();
    let open = |disk: bool| {
        // A cache too small to keep a chunk: every read fetches (from the store or the disk).
        let mut opts = VolumeOptions { cache_bytes: 64 * 1024, ..options("first") };
        if disk {
            let store = ctx.disk_cache_store(cache_dir.path()).unwrap();
            opts.disk_cache = Some(rtgt::s3::volume::DiskCacheOptions { store, bytes_max: 64 * CHUNK });
        }
        S3Volume::open(store.clone(), url.clone(), opts, Arc::new(TokioClock::new()))
    };
    let data: Vec<u8> = (0..4 * CHUNK).map(|i| (i % 253) as u8 + 1).collect();
    let v = open(false).await.unwrap();
    v.write(0, Bytes::from(data.clone()), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    // Each chunk read once, then kept on disk (in the background: read until all are there).
    let v = open(true).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while v.counters().disk_cache_bytes != 4 * CHUNK {
        assert!(tokio::time::Instant::now() < deadline, "the disk cache holds {}", v.counters().disk_cache_bytes);
        assert_eq!(&v.read(0, 4 * CHUNK as usize).await.unwrap()[..], &data[..]);
    }
    v.close().await.unwrap();
    drop(v);
    let v = open(true).await.unwrap();
    let gets = v.s3_stats().get.load(Ordering::Relaxed);
    assert_eq!(&v.read(0, 4 * CHUNK as usize).await.unwrap()[..], &data[..]);
    assert_eq!(v.s3_stats().get.load(Ordering::Relaxed), gets, "no GET: the versions listed match the entries");
    assert_eq!(v.counters().read_bytes_disk, 4 * CHUNK);
    v.close().await.unwrap();
}

/// Credentials for servers the tests run themselves.
fn test_credentials() -> embedded::Credentials {
    embedded::Credentials { access_key: "test".into(), secret_key: "test-secret-key".into() }
}

/// s3s-fs through aws-sdk-s3 in-process: the S3 implementation the embedded store used to be.
async fn s3s_fs_client(dir: &std::path::Path, bucket: &str) -> AwsStore {
    let fs = s3s_fs::FileSystem::new(dir).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    let credentials = test_credentials();
    builder
        .set_auth(s3s::auth::SimpleAuth::from_single(credentials.access_key.as_str(), credentials.secret_key.as_str()));
    let endpoint = Endpoint {
        url: Some("http://s3.local".into()),
        ..embedded::endpoint_for("127.0.0.1:1".parse().unwrap(), &credentials)
    };
    let config = sdk_config(&endpoint).await.http_client(rtgt_testkit::InProcessS3::from(builder.build())).build();
    let aws = AwsStore::with_client(aws_sdk_s3::Client::from_conf(config), bucket);
    aws.ensure_bucket().await.unwrap();
    aws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_against_s3s_fs_through_the_in_process_connector() {
    let dir = tempfile::tempdir().unwrap();
    let aws = s3s_fs_client(dir.path(), "vols").await;
    exercise(Arc::new(aws)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_gc_against_s3s_fs() {
    let dir = tempfile::tempdir().unwrap();
    exercise_snapshots(Arc::new(s3s_fs_client(dir.path(), "vols").await)).await;
}

/// A data directory of an earlier rtgt (objects written by s3s-fs) opens with the local
/// store: the objects are converted, metadata and all, and the volume reads back its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_converts_what_s3s_fs_left() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..CHUNK).map(|i| (i % 253) as u8 + 1).collect();
    {
        let aws = Arc::new(s3s_fs_client(dir.path(), "vols").await);
        let url = S3Url::parse("s3://vols/disk").unwrap();
        let v = S3Volume::open(aws, url, restarting_node_options("old"), Arc::new(TokioClock::new())).await.unwrap();
        v.write(2 * CHUNK, Bytes::from(data.clone()), false).await.unwrap();
        v.write(512, Bytes::from(vec![7u8; 4096]), true).await.unwrap(); // logged, left for replay
        v.abandon();
    }
    let root = embedded::open_root(dir.path()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(leftovers.is_empty(), "s3s-fs side files removed: {leftovers:?}");
    let store = Arc::new(root.bucket("vols").unwrap());
    let url = S3Url::parse("s3://vols/disk").unwrap();
    let v = S3Volume::open(store, url, restarting_node_options("old"), Arc::new(TokioClock::new())).await.unwrap();
    assert_eq!(v.read(2 * CHUNK, CHUNK as usize).await.unwrap(), data);
    assert_eq!(v.read(512, 4096).await.unwrap(), vec![7u8; 4096], "the log was replayed");
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_sends_content_md5() {
    // DeleteObjects through the in-process service: s3s checks Content-MD5 when present, so a
    // wrong digest would fail the request.
    let dir = tempfile::tempdir().unwrap();
    let aws = s3s_fs_client(dir.path(), "bk1").await;
    for i in 0..5 {
        aws.put(&format!("k{i}"), Bytes::from_static(b"x"), Default::default(), rtgt::s3::Condition::None)
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    let results = aws.delete_many(keys).await.unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert!(list_all(&aws, "k").await.unwrap().is_empty());
}

/// `rtgt serve`'s embedded default shape: a target on an S3 volume in the embedded server.
fn s3_target_config(data_dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
        [server]
        data_dir = "{}"

        [embedded_s3]
        listen = "127.0.0.1:0"

        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:0"]

        [[target]]
        name = "{}"

        [[target.lun]]
        lun = 1
        backend = "s3"
        url = "s3://rtgt/default"
        endpoint = "embedded"
        size = "64MiB"
        create = true
        "#,
        data_dir.display(),
        common::TARGET
    );
    Config::from_toml(&text).unwrap()
}

/// A running target of `s3_target_config`.
struct S3Target {
    root: Arc<LocalRoot>,
    server: Arc<Server<TokioNet>>,
    addr: std::net::SocketAddr,
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_s3_target(config: &Config) -> S3Target {
    let root = embedded::open_root(&config.embedded_root().unwrap()).unwrap();
    let mut ctx = BuildContext::new();
    ctx.embedded = Some(root.clone());
    let registry = Arc::new(Registry::new());
    config.populate(&registry, &ctx).await.unwrap();
    let server = Arc::new(Server::new(TokioNet, ctx.clock.clone(), registry, config.settings()));
    let portals = server.bind().await.unwrap();
    let addr = portals[0].addr;
    let accepting = portals.into_iter().map(|p| tokio::spawn(server.clone().accept_loop(p))).collect();
    S3Target { root, server, addr, accepting }
}

impl S3Target {
    /// Shuts down and lets go of everything, as an exiting process would: the store's lock too.
    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
        for a in self.accepting {
            a.abort();
            let _ = a.await;
        }
        drop(self.server);
        // Blocking jobs of the store finish on their own; then nothing holds it (nor its lock).
        let released = async {
            while Arc::strong_count(&self.root) > 1 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), released)
            .await
            .expect("something keeps the store after shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_writes_survive_a_target_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = s3_target_config(dir.path());
    let target = start_s3_target(&config).await;
    let addr = target.addr;
    let url = format!("iscsi://{addr}/{}/1", common::TARGET);
    // CompareAndWrite.Simple writes 'A's and 'B's over the first and last 256 blocks.
    let out = tokio::process::Command::new("iscsi-test-cu")
        .args(["-d", "-t", "ALL.CompareAndWrite.Simple", &url])
        .output()
        .await
        .expect("iscsi-test-cu (apt-get install -y libiscsi-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("passed"), "{text}");
    let before = read_lun(addr).await;
    assert!(before.iter().any(|&b| b == b'A' || b == b'B'), "libiscsi's data is there");
    target.stop().await;

    let target = start_s3_target(&config).await;
    assert_eq!(read_lun(target.addr).await, before, "the data survived the restart");
    target.stop().await;
}

/// The first 256 blocks of LUN 1, read with the library's initiator.
async fn read_lun(addr: std::net::SocketAddr) -> Bytes {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cfg = rtgt_testkit::initiator::InitiatorConfig { isid: 0x99, ..Default::default() };
    let s = rtgt_testkit::initiator::Session::login(stream, &cfg, Some(common::TARGET)).await.unwrap();
    s.clear_unit_attentions(1).await.unwrap();
    let data = s.read(1, 0, 256, 512).await.unwrap();
    s.logout().await.unwrap();
    data
}

/// What a picky store (MinIO, s3proxy) sees of DeleteObjects: Content-MD5 and no SDK
/// checksum header. Checked on the wire with a listener that records the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_on_the_wire_has_content_md5_and_no_crc32() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the headers and the body (Content-Length).
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if req.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult></DeleteResult>";
        let resp =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        sock.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&req).to_ascii_lowercase()
    });
    let endpoint = embedded::endpoint_for(addr, &test_credentials());
    let aws = AwsStore::connect(&endpoint, "bk1").await;
    let results = aws.delete_many(vec!["a".into(), "b".into()]).await.unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    let request = capture.await.unwrap();
    assert!(request.contains("\r\ncontent-md5:"), "{request}");
    assert!(!request.contains("x-amz-checksum-"), "{request}");
}

/// Waits until nothing holds the local store at `dir` any more (its blocking jobs finish on
/// their own) and it let go of its lock (a clean close writes its marker first: the lock goes
/// after the last reference).
async fn released(root: &std::sync::Weak<LocalRoot>, dir: &std::path::Path) {
    let lock = dir.join(rtgt::s3::local::LOCK_NAME);
    let gone = async {
        while root.upgrade().is_some() || rtgt::node::lock_file(&lock).is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone).await.expect("something keeps the store");
}

/// A log damaged on disk (not cut short by a crash: whole but wrong) stops the volume from
/// opening, with a way out that names it: `rtgt volume discard-log`, after which it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_open_until_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let open = |root: &Arc<LocalRoot>| {
        let store = Arc::new(root.bucket("vols").unwrap());
        let url = S3Url::parse("s3://vols/disk").unwrap();
        S3Volume::open(store, url, restarting_node_options("one"), Arc::new(TokioClock::new()))
    };
    let gone = {
        let root = embedded::open_root(dir.path()).unwrap();
        root.create_bucket("vols").unwrap();
        let v = open(&root).await.unwrap();
        v.write(0, Bytes::from(vec![3u8; 4096]), true).await.unwrap(); // logged
        v.abandon();
        Arc::downgrade(&root)
    };
    // The store's lock goes with its last user (a blocking job may still be finishing).
    released(&gone, dir.path()).await;
    let log_dir = dir.path().join("vols/disk/log");
    let log = std::fs::read_dir(&log_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();

    let (err, gone) = {
        let root = embedded::open_root(dir.path()).unwrap();
        (open(&root).await.err().unwrap().to_string(), Arc::downgrade(&root))
    };
    released(&gone, dir.path()).await;
    assert!(err.contains("damaged") && err.contains("rtgt volume discard-log s3://vols/disk"), "{err}");
    let seq = err.rsplit(' ').next().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtgt"))
        .args(["volume", "discard-log", "s3://vols/disk", &seq, "--store-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = embedded::open_root(dir.path()).unwrap();
    let v = open(&root).await.unwrap();
    assert_eq!(v.read(0, 4096).await.unwrap(), vec![0u8; 4096], "what the discarded log held is gone");
}

/// An encrypted volume through the command line: imported with its key, shown as encrypted,
/// stored with no plaintext on disk, refused to an export without its key or with another,
/// and exported byte for byte with it.
#[test]
fn an_encrypted_volume_round_trips_through_import_and_export_with_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s3");
    embedded::open_root(&store).unwrap().create_bucket("vols").unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, [0x5cu8; 32]).unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, [0x5du8; 32]).unwrap();
    // 3 MiB with holes: data in the first 64 KiB and at 2 MiB.
    let image = image_with_holes(3 << 20, 0xa5);
    let image_path = dir.path().join("image");
    std::fs::write(&image_path, &image).unwrap();
    let rtgt = |args: &[&str]| rtgt_on(&store, args);
    let (key, other) = (key.to_str().unwrap(), other.to_str().unwrap());
    let image_arg = image_path.to_str().unwrap();
    let (ok, text) =
        rtgt(&["volume", "import", image_arg, "s3://vols/enc", "--chunk-size", "1MiB", "--encryption-key-file", key]);
    assert!(ok, "{text}");
    let (ok, text) = rtgt(&["volume", "info", "s3://vols/enc"]);
    assert!(ok && text.contains("encryption: xchacha20poly1305, the data key wrapped by a 256-bit key"), "{text}");
    let mut stored = Vec::new();
    for entry in walk(&store.join("vols/enc")) {
        stored.push(std::fs::read(entry).unwrap());
    }
    assert!(stored.len() >= 3, "the metadata, two chunks at least");
    let plaintext = &image[1000..1064];
    assert!(!stored.iter().any(|file| file.windows(64).any(|w| w == plaintext)), "plaintext on disk");

    let out = dir.path().join("out");
    let out_arg = out.to_str().unwrap();
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/enc", out_arg]);
    assert!(!ok && text.contains("is encrypted: give its key"), "{text}");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/enc", out_arg, "--encryption-key-file", other]);
    assert!(!ok && text.contains("a wrong key"), "{text}");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/enc", out_arg, "--encryption-key-file", key]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&out).unwrap() == image, "the export differs from the image");

    // A new key (here a passphrase) wraps the same data key; the old key no longer opens it.
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple").unwrap();
    let passphrase = passphrase.to_str().unwrap();
    let rekey = ["volume", "rekey", "s3://vols/enc", "--encryption-key-file", key];
    let (ok, text) = rtgt(&[&rekey[..], &["--new-encryption-passphrase-file", passphrase]].concat());
    assert!(ok, "{text}");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/enc", out_arg, "--encryption-key-file", key]);
    assert!(!ok && text.contains("its key is a passphrase"), "{text}");
    std::fs::remove_file(&out).unwrap();
    let with_passphrase = ["volume", "export", "s3://vols/enc", out_arg, "--encryption-passphrase-file", passphrase];
    let (ok, text) = rtgt(&with_passphrase);
    assert!(ok, "{text}");
    assert!(std::fs::read(&out).unwrap() == image, "the export after the rekey differs from the image");
    let (ok, text) = rtgt(&["volume", "info", "s3://vols/enc"]);
    assert!(ok && text.contains("wrapped by a passphrase (Argon2id)"), "{text}");
}

/// A compressed volume through the command line: created by import, its info shows what the
/// compression saved (a text image stores in less than half), and it exports byte for byte.
#[test]
fn a_compressed_volume_round_trips_through_import_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s3");
    embedded::open_root(&store).unwrap().create_bucket("vols").unwrap();
    // 8 MiB of CSV-like lines, with a hole.
    let mut image = Vec::with_capacity(8 << 20);
    let mut row = 0u64;
    while image.len() < 8 << 20 {
        image.extend_from_slice(
            format!("{row},2026-12-05,customer-{},ok,{}\n", row % 977, row * 31 % 10_007).as_bytes(),
        );
        row += 1;
    }
    image.truncate(8 << 20);
    image[3 << 20..4 << 20].fill(0);
    let image_path = dir.path().join("image");
    std::fs::write(&image_path, &image).unwrap();
    let rtgt = |args: &[&str]| rtgt_on(&store, args);
    let import = ["volume", "import", image_path.to_str().unwrap(), "s3://vols/z", "--compression", "zstd"];
    let (ok, text) = rtgt(&import);
    assert!(ok, "{text}");
    let (ok, text) = rtgt(&["volume", "info", "s3://vols/z"]);
    assert!(ok, "{text}");
    let line = text.lines().find(|l| l.starts_with("compression: zstd")).unwrap_or_else(|| panic!("{text}"));
    let percent: f64 = line.rsplit('(').next().unwrap().trim_end_matches("%)").parse().unwrap();
    assert!(percent < 50.0, "{line}");
    assert!(text.contains("format:     5"), "{text}");
    let out = dir.path().join("out");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/z", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&out).unwrap() == image, "the export differs from the image");

    // Another import of the same image is another volume, with a uuid of its own (every
    // import had the same one, and volumes sharing a cache_dir replayed each other's journal).
    let (ok, text) = rtgt(&["volume", "import", image_path.to_str().unwrap(), "s3://vols/z2"]);
    assert!(ok, "{text}");
    let uuid = |url: &str| {
        let (ok, text) = rtgt(&["volume", "info", url]);
        assert!(ok, "{text}");
        text.lines().find(|l| l.trim_start().starts_with("uuid")).unwrap_or_else(|| panic!("{text}")).to_string()
    };
    assert_ne!(uuid("s3://vols/z"), uuid("s3://vols/z2"));
}

/// `len` bytes with data in the first 64 KiB and in 100,000 bytes at 2 MiB, zeros elsewhere.
fn image_with_holes(len: usize, salt: u8) -> Vec<u8> {
    let mut image = vec![0u8; len];
    for range in [0..64 << 10, 2 << 20..(2 << 20) + 100_000] {
        for i in range {
            image[i] = (i % 251) as u8 ^ salt;
        }
    }
    image
}

/// Runs the rtgt command line on the embedded store at `store`: whether it succeeded, and
/// what it printed.
fn rtgt_on(store: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtgt"))
        .args(args)
        .arg("--store-dir")
        .arg(store)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every file under a directory.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(walk(&path)),
            false => files.push(path),
        }
    }
    files
}

/// Snapshots through the command line: taken of an imported volume, listed, exported byte for
/// byte as they were after the volume changed, and deleted.
#[test]
fn a_snapshot_exports_its_point_in_time_after_the_volume_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s3");
    embedded::open_root(&store).unwrap().create_bucket("vols").unwrap();
    let image = image_with_holes(4 << 20, 0x3c);
    let image_path = dir.path().join("image");
    std::fs::write(&image_path, &image).unwrap();
    let rtgt = |args: &[&str]| rtgt_on(&store, args);
    let (ok, text) =
        rtgt(&["volume", "import", image_path.to_str().unwrap(), "s3://vols/snap", "--chunk-size", "1MiB"]);
    assert!(ok, "{text}");
    let (ok, text) = rtgt(&["volume", "snapshot", "create", "s3://vols/snap", "before"]);
    assert!(ok && text.contains("snapshot s3://vols/snap@before: 2 chunks hold data"), "{text}");

    // The volume changes: a write over the first chunk, the third chunk unmapped.
    let mut changed = image.clone();
    changed[..4096].fill(0xee);
    changed[2 << 20..3 << 20].fill(0);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let gone = {
            let root = embedded::open_root(&store).unwrap();
            let url = S3Url::parse("s3://vols/snap").unwrap();
            let opts = VolumeOptions { holder: "writer".into(), ..VolumeOptions::default() };
            let v = S3Volume::open(Arc::new(root.bucket("vols").unwrap()), url, opts, Arc::new(TokioClock::new()))
                .await
                .unwrap();
            v.write(0, Bytes::from(vec![0xeeu8; 4096]), false).await.unwrap();
            v.unmap(2 << 20, 1 << 20).await.unwrap();
            v.close().await.unwrap();
            Arc::downgrade(&root)
        };
        released(&gone, &store).await;
    });

    let (ok, text) = rtgt(&["volume", "snapshot", "list", "s3://vols/snap"]);
    assert!(ok && text.contains("before") && text.contains("4MiB"), "{text}");
    let (snap_out, now_out) = (dir.path().join("snap.img"), dir.path().join("now.img"));
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/snap@before", snap_out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&snap_out).unwrap() == image, "the snapshot's export differs from the image it was");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/snap", now_out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&now_out).unwrap() == changed, "the volume's export differs from what it became");

    // A clone of the snapshot: made at once, it reads the snapshot's data; the snapshot stays
    // while it exists.
    let (ok, text) = rtgt(&["volume", "clone", "s3://vols/snap@before", "s3://vols/copy"]);
    assert!(ok && text.contains("cloned s3://vols/snap@before to s3://vols/copy: 4MiB"), "{text}");
    let (ok, text) = rtgt(&["volume", "info", "s3://vols/copy"]);
    assert!(ok && text.contains("clone of:   s3://vols/snap@before") && text.contains("format:     4"), "{text}");
    let copy_out = dir.path().join("copy.img");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/copy", copy_out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&copy_out).unwrap() == image, "the clone's export differs from its snapshot");
    let (ok, text) = rtgt(&["volume", "snapshot", "delete", "s3://vols/snap", "before"]);
    assert!(!ok && text.contains("has clones"), "{text}");
    // The clone's metadata gone by other means: its record is stale, and gc removes it.
    std::fs::remove_file(store.join("vols/copy/rtgt-volume.json")).unwrap();
    let (ok, text) = rtgt(&["volume", "gc", "s3://vols/snap"]);
    assert!(ok && text.contains("1 records of missing clones removed"), "{text}");

    let (ok, text) = rtgt(&["volume", "snapshot", "delete", "s3://vols/snap", "before"]);
    assert!(ok, "{text}");
    let (ok, text) = rtgt(&["volume", "snapshot", "list", "s3://vols/snap"]);
    assert!(ok && !text.contains("before"), "{text}");
    let (ok, text) = rtgt(&["volume", "export", "s3://vols/snap@before", snap_out.to_str().unwrap()]);
    assert!(!ok && text.contains("has no snapshot named before"), "{text}");
}

/// A 1 GiB image with holes through the command line: imported (sparse: only the pieces with
/// data are stored), exported (sparse: holes stay holes), byte for byte the same.
#[test]
fn a_1_gib_image_with_holes_round_trips_through_import_and_export() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s3");
    embedded::open_root(&store).unwrap().create_bucket("vols").unwrap();
    let image_path = dir.path().join("image");
    let mut image = std::fs::File::create(&image_path).unwrap();
    image.set_len(1 << 30).unwrap();
    // Data in 16 places (whole chunks, pieces of chunks, single blocks across chunk edges).
    let places: Vec<(u64, usize)> =
        (0..16u64).map(|i| ((i * 67) << 20 | (i * 4096 % (1 << 20)), 512 << (i % 12))).collect();
    for (i, &(at, len)) in places.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j % 253) as u8 ^ i as u8 | 1).collect();
        image.seek(SeekFrom::Start(at)).unwrap();
        image.write_all(&data).unwrap();
    }
    image.sync_all().unwrap();
    let (ok, text) = rtgt_on(&store, &["volume", "import", image_path.to_str().unwrap(), "s3://vols/big"]);
    assert!(ok && text.contains("of 1GiB"), "{text}");
    let stored: u64 = walk(&store.join("vols/big/chunks")).iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(stored <= 16 * (4 << 20) + (1 << 20), "{stored} bytes stored for 16 places of data");
    let out = dir.path().join("out");
    let (ok, text) = rtgt_on(&store, &["volume", "export", "s3://vols/big", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (mut a, mut b) = (std::fs::File::open(&image_path).unwrap(), std::fs::File::open(&out).unwrap());
    assert_eq!(b.metadata().unwrap().len(), 1 << 30);
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    for piece in 0..256u64 {
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        assert!(x == y, "the export differs in the piece at {} MiB", piece * 4);
    }
    let allocated = std::os::unix::fs::MetadataExt::blocks(&b.metadata().unwrap()) * 512;
    assert!(allocated < 128 << 20, "the export allocated {allocated} bytes: its holes were written");
}
