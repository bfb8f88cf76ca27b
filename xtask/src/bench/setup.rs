//! The targets under test: rtgt and tgtd set up side by side on the same kind of backing, and
//! the LUN files they share.

use super::*;

/// A running target with one 1 GiB LU 1.
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) iqn: &'static str,
    pub(crate) log: PathBuf,
    pub(crate) server: Option<Watched>,
}

impl Target {
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.server.as_ref()?.cpu_seconds()
    }

    pub(crate) fn thread_run_seconds(&self) -> Option<f64> {
        self.server.as_ref()?.thread_run_seconds()
    }

    pub(crate) fn alive(&self) -> bool {
        self.server.as_ref().is_some_and(Watched::alive)
    }
}

pub(crate) fn start_rtgt(
    binary: &Path,
    backing: Backing,
    file_backend: &str,
    dir: &Path,
    lun_file: &Path,
) -> Result<Target, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let lun = match backing {
        Backing::Memory => "backend = \"memory\"\nsize = \"1GiB\"".to_string(),
        Backing::File => {
            format!("backend = \"{file_backend}\"\npath = \"{}\"\nsize = \"1GiB\"", lun_file.display())
        }
    };
    let config = format!(
        "[server]\ndata_dir = \"{}\"\n\n[api]\nlisten = \"off\"\n\n[[portal_group]]\ntag = 1\nportals = [\"{addr}\"]\n\n\
         [[target]]\nname = \"{RTGT_IQN}\"\n\n[[target.lun]]\nlun = 1\n{lun}\n",
        dir.display()
    );
    let config_path = dir.join("rtgt.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = dir.join(format!("rtgt-{}.log", backing.name()));
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let args = vec!["serve".to_string(), "--config".to_string(), config_path.display().to_string()];
    let server = Watched::spawn("rtgt", binary, &args, &log, &[("RUST_LOG", &rust_log)])?;
    wait_for_port(addr, &server, &log)?;
    Ok(Target { kind: Kind::Rtgt, addr, iqn: RTGT_IQN, log, server: Some(server) })
}

pub(crate) struct Tgt {
    pub(crate) tgtd: PathBuf,
    pub(crate) tgtadm: PathBuf,
}

pub(crate) fn tgtadm(tgt: &Tgt, control: u32, args: &[&str], dir: &Path) -> Result<String, String> {
    let mut all: Vec<String> = vec!["-C".into(), control.to_string(), "--lld".into(), "iscsi".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let ran = run_limited(&tgt.tgtadm, &all, Duration::from_secs(15), dir)?;
    if !ran.success {
        return Err(format!(
            "tgtadm {}: {} {}",
            args.join(" "),
            ran.status,
            last_line(&format!("{}\n{}", ran.stdout, ran.stderr))
        ));
    }
    Ok(ran.stdout)
}

pub(crate) fn start_tgtd(tgt: &Tgt, backing: Backing, dir: &Path, lun_file: &Path) -> Result<Target, String> {
    // A control port of our own, so that another tgtd (the system's, another run) is untouched.
    let sockets = Path::new("/var/run/tgtd");
    let base = 1000 + std::process::id() % 30000;
    let control = (base..base + 1000)
        .find(|n| !sockets.join(format!("socket.{n}")).exists() && !sockets.join(format!("socket.{n}.lock")).exists())
        .ok_or("no free tgtd control port")?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().expect("address");
    let log = dir.join(format!("tgtd-{}.log", backing.name()));
    let args: Vec<String> = ["-f", "-C", &control.to_string(), "--iscsi", &format!("portal={addr}")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Its control socket and lock stay behind it: the watchdog removes them.
    let leftovers = format!("{0}/socket.{control}\n{0}/socket.{control}.lock", sockets.display());
    let server = Watched::spawn("tgtd", &tgt.tgtd, &args, &log, &[("WATCHDOG_CLEANUP", &leftovers)])?;
    let target = Target { kind: Kind::Tgtd, addr, iqn: TGTD_IQN, log: log.clone(), server: Some(server) };
    wait_for_port(addr, target.server.as_ref().expect("started"), &log)?;
    // The control socket may come up a little after the portal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tgtadm(tgt, control, &["--mode", "target", "--op", "new", "--tid", "1", "--targetname", TGTD_IQN], dir) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let store = lun_file.display().to_string();
    tgtadm(
        tgt,
        control,
        &[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            &store,
            "--bstype",
            "rdwr",
        ],
        dir,
    )?;
    tgtadm(tgt, control, &["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"], dir)?;
    for (name, value) in TGTD_PARAMS {
        tgtadm(
            tgt,
            control,
            &["--mode", "target", "--op", "update", "--tid", "1", "--name", name, "--value", value],
            dir,
        )?;
    }
    let shown = tgtadm(tgt, control, &["--mode", "target", "--op", "show", "--tid", "1"], dir)?;
    for (name, value) in TGTD_PARAMS {
        if !shown.lines().any(|l| l.trim() == format!("{name}={value}")) {
            return Err(format!("tgtd did not take {name}={value}"));
        }
    }
    Ok(target)
}

pub(crate) fn tgtd_version(tgt: &Tgt) -> String {
    Command::new(&tgt.tgtd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| last_line(&String::from_utf8_lossy(&o.stdout)))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// USER_HZ, the unit of /proc's CPU times.
pub(crate) fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A 1 GiB file: sparse (`Target`: filled through the target before the runs; `Sparse`: never),
/// fallocated, or with `Dd` full of random data written in 1 MiB pieces and synced, as
/// `dd if=/dev/urandom bs=1M` leaves it.
pub(crate) fn create_lun_file(path: &Path, state: FileState) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path).map_err(err)?;
    match state {
        FileState::Target | FileState::Sparse => f.set_len(LUN_SIZE).map_err(err),
        FileState::Fallocated => {
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate takes plain integers.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, LUN_SIZE as libc::off_t) };
            if rc != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            f.sync_all().map_err(err)
        }
        FileState::Dd => {
            let mut piece = vec![0u8; 1 << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..LUN_SIZE / piece.len() as u64 {
                for word in piece.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    word.copy_from_slice(&x.to_le_bytes());
                }
                f.write_all(&piece).map_err(err)?;
            }
            f.sync_all().map_err(err)
        }
    }
}

/// Compiles `libiscsi_load.c` into target/bench (gcc and libiscsi-dev).
pub(crate) fn build_libiscsi_load() -> Result<PathBuf, String> {
    let source = root().join("xtask/src/bench/libiscsi_load.c");
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let binary = out.join("libiscsi-load");
    let built = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .arg("-liscsi")
        .output()
        .map_err(|e| format!("gcc not found ({e}): apt-get install -y gcc libiscsi-dev (or --client own)"))?;
    if !built.status.success() {
        return Err(format!(
            "building libiscsi-load failed (apt-get install -y libiscsi-dev, or --client own): {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    Ok(binary)
}
