//! A network emulator for tests and benchmarks: a TCP proxy that puts distance between a
//! client and a server. It adds a one-way delay to every byte in each direction, caps each
//! direction's bandwidth (shared by all connections, as a link's is), and can take the server
//! away: refuse connections and reset the open ones (a stopped server), or hold every byte
//! (a black hole: requests time out). Bytes queued per connection and direction are bounded,
//! so a capped link pushes back on its sender the way TCP does.
// The emulated link runs on wall-clock time against real sockets.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the link is like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkSpec {
    /// Added to every byte in each direction (a round trip costs twice this).
    pub one_way_delay: Duration,
    /// Bytes per second in each direction; None: unlimited.
    pub bytes_per_sec: Option<u64>,
}

impl LinkSpec {
    /// A link with this round-trip time and a cap in bits per second (0: none).
    pub fn new(rtt: Duration, bits_per_sec: u64) -> LinkSpec {
        LinkSpec { one_way_delay: rtt / 2, bytes_per_sec: (bits_per_sec > 0).then_some((bits_per_sec / 8).max(1)) }
    }
}

/// Whether the server can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Up,
    /// Connections are reset and new ones refused, as when the server is stopped.
    Refused,
    /// Nothing is forwarded; bytes wait until the link is up again.
    BlackHole,
}

/// One direction of the link: when its wire is next free.
struct Wire {
    free_at: Mutex<Instant>,
    bytes_per_sec: Option<u64>,
}

impl Wire {
    /// Reserves the wire for `len` bytes; returns when the last of them has been sent.
    fn send(&self, len: usize) -> Instant {
        let now = Instant::now();
        let Some(rate) = self.bytes_per_sec else { return now };
        let mut free_at = self.free_at.lock().expect("wire poisoned");
        let start = (*free_at).max(now);
        *free_at = start + Duration::from_nanos(len as u64 * 1_000_000_000 / rate);
        *free_at
    }
}

struct Link {
    spec: LinkSpec,
    up: Wire,
    down: Wire,
    reach: watch::Sender<Reach>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

/// A running proxy; stops when dropped.
pub struct Netem {
    addr: SocketAddr,
    link: Arc<Link>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.accept.abort();
        self.link.resets.send_modify(|n| *n += 1);
    }
}

/// Bytes read from a socket at once.
const READ_SIZE: usize = 16 << 10;
/// Reads queued per connection and direction (with the socket buffers, what is in flight).
const QUEUED_READS: usize = 16;

impl Netem {
    /// Listens on a free loopback port and forwards to `upstream` through the link.
    pub async fn start(upstream: SocketAddr, spec: LinkSpec) -> std::io::Result<Netem> {
        Netem::start_on("127.0.0.1:0".parse().expect("address"), upstream, spec).await
    }

    /// Listens on `listen` and forwards to `upstream` through the link.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr, spec: LinkSpec) -> std::io::Result<Netem> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let wire = || Wire { free_at: Mutex::new(Instant::now()), bytes_per_sec: spec.bytes_per_sec };
        let link = Arc::new(Link {
            spec,
            up: wire(),
            down: wire(),
            reach: watch::channel(Reach::Up).0,
            resets: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, link.clone()));
        Ok(Netem { addr, link, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `http://` endpoint for the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spec(&self) -> LinkSpec {
        self.link.spec
    }

    /// Takes the server away or brings it back.
    pub fn set_reach(&self, reach: Reach) {
        if reach == Reach::Refused {
            self.link.resets.send_modify(|n| *n += 1);
        }
        self.link.reach.send_replace(reach);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, link: Arc<Link>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if *link.reach.borrow() == Reach::Refused {
            reset(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, link.clone()));
    }
}

/// Closes a socket with a reset, as a stopped server's kernel answers.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(client: TcpStream, upstream: SocketAddr, link: Arc<Link>) {
    let mut resets = link.resets.subscribe();
    resets.borrow_and_update();
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Reset both ends when the link resets them.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let pumps = async {
        tokio::join!(
            pump(client_read, server_write, &link, &link.up),
            pump(server_read, client_write, &link, &link.down)
        )
    };
    tokio::select! {
        _ = pumps => {}
        _ = resets.changed() => {}
    }
}

/// Forwards one direction: reads, waits out the wire and the delay, writes, in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link,
    wire: &Wire,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUED_READS);
    let deliver = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let forward = async move {
        let mut reach = link.reach.subscribe();
        loop {
            let mut buf = BytesMut::with_capacity(READ_SIZE);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // A black hole holds what it got until the link is up again.
            if reach.wait_for(|r| *r != Reach::BlackHole).await.is_err() {
                return;
            }
            let sent = wire.send(buf.len());
            // Do not run far ahead of the wire: a capped link fills, then pushes back.
            if sent > Instant::now() + Duration::from_millis(20) {
                tokio::time::sleep_until(sent - Duration::from_millis(20)).await;
            }
            if tx.send((sent + link.spec.one_way_delay, buf.freeze())).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(deliver, forward);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_round_trip_costs_the_delay_and_bytes_pass_unchanged() {
        let netem = Netem::start(echo_server().await, LinkSpec::new(Duration::from_millis(40), 0)).await.unwrap();
        let mut s = TcpStream::connect(netem.addr()).await.unwrap();
        let started = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(40), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn refused_resets_open_connections_and_refuses_new_ones() {
        let netem = Netem::start(echo_server().await, LinkSpec::default()).await.unwrap();
        let mut s = TcpStream::connect(netem.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        netem.set_reach(Reach::Refused);
        let mut rest = Vec::new();
        assert!(matches!(s.read_to_end(&mut rest).await, Ok(0) | Err(_)), "the open connection ends");
        let mut fresh = TcpStream::connect(netem.addr()).await.unwrap();
        let _ = fresh.write_all(b"y").await;
        assert!(matches!(fresh.read(&mut one).await, Ok(0) | Err(_)), "a new connection is refused");
        netem.set_reach(Reach::Up);
        let mut back = TcpStream::connect(netem.addr()).await.unwrap();
        back.write_all(b"z").await.unwrap();
        back.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"z");
    }
}
