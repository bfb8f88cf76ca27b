//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify` units: READY=1 once
//! the target serves, STOPPING=1 when it shuts down, WATCHDOG=1 while the engine answers. A
//! datagram to the socket `$NOTIFY_SOCKET` names (a path, or `@name` for the abstract
//! namespace); without it every call does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` ("READY=1", ...) to the service manager. Ok(false): not run by one.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Sends `state`, logging (not failing) when the service manager cannot be told.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(state, error = %e, "cannot notify the service manager");
    }
}

/// How often the service manager wants WATCHDOG=1 (`$WATCHDOG_USEC`, for this process), if
/// at all.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid.parse() == Ok(std::process::id()));
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_sent_without_a_service_manager() {
        // The test process may run under one: only check the parsing side.
        assert!(watchdog_interval().is_none() || std::env::var("WATCHDOG_USEC").is_ok());
    }
}
