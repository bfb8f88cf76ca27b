use super::*;

#[test]
fn sizes_parse_and_print() {
    assert_eq!(Size::parse("10GiB"), Ok(Size(10 << 30)));
    assert_eq!(Size::parse("512M"), Ok(Size(512 << 20)));
    assert_eq!(Size::parse("4096"), Ok(Size(4096)));
    assert!(Size::parse("10XB").unwrap_err().contains("unknown size unit"));
    assert!(Size::parse("lots").is_err());
    assert_eq!(Size(10 << 30).to_string(), "10GiB");
    assert_eq!(Size(1000).to_string(), "1000");
}

#[test]
fn iscsi_names() {
    assert!(validate_iscsi_name("iqn.2026-11.org.example:disk1").is_ok());
    assert!(validate_iscsi_name("eui.02004567a425678d").is_ok());
    assert!(validate_iscsi_name("naa.52004567ba64678d").is_ok());
    assert!(validate_iscsi_name("iqn.2026.org.example").is_err());
    assert!(validate_iscsi_name("iqn.2026-11.Org.Example").is_err());
    assert!(validate_iscsi_name("disk1").is_err());
}

#[test]
fn full_config_parses_and_round_trips() {
    let text = r#"
        [server]
        queue_depth = 64

        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:3260", "[::1]:3260"]

        [[target]]
        name = "iqn.2026-11.org.example:disk1"
        alias = "disk one"

        [[target.lun]]
        lun = 0
        backend = "memory"
        size = "64MiB"

        [[target.lun]]
        lun = 1
        backend = "file"
        path = "/tmp/x.img"
        size = 1048576
        block_size = 4096
        create = true
    "#;
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.server.queue_depth, 64);
    assert_eq!(c.targets[0].luns[0].size, Some(Size(64 << 20)));
    let back = Config::from_toml(&c.to_toml()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn validation_names_each_field() {
    let text = r#"
        [[portal_group]]
        tag = 1
        portals = ["nonsense"]

        [[target]]
        name = "disk1"
        portal_groups = [2]

        [[target.lun]]
        lun = 0
        backend = "tape"
        size = "1000"

        [[target.lun]]
        lun = 0
        backend = "file"

        [[target]]
        name = "iqn.2026-11.org.example:a"
        [[target.lun]]
        lun = 0
        backend = "file"
        path = "/tmp/same.img"
        queue_depth = 64
        [[target.lun]]
        lun = 1
        backend = "uring"
        path = "/tmp/same.img"
        queue_depth = 0
    "#;
    let err = Config::from_toml(text).unwrap_err().0.join("\n");
    for expected in [
        "portal_group[0] (tag 1).portals: \"nonsense\" is not an address",
        "target[0] (disk1).name: an iSCSI name starts with",
        "target[0] (disk1).portal_groups: no portal group with tag 2",
        "target[0] (disk1).lun[0] (LUN 0).backend: unknown backend \"tape\"",
        "target[0] (disk1).lun[0] (LUN 0).size: 1000 bytes is not a multiple of the block size 512",
        "target[0] (disk1).lun[1] (LUN 0).lun: duplicate LUN number",
        "target[0] (disk1).lun[1] (LUN 0).path: required for backend \"file\"",
        "target[1] (iqn.2026-11.org.example:a).lun[0] (LUN 0).queue_depth: not used by backend \"file\" (only uring)",
        "target[1] (iqn.2026-11.org.example:a).lun[1] (LUN 1).queue_depth: 0 is out of range (1 to 4096)",
        "two LUNs on one file would corrupt it",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_portal_group_has_an_alua_state() {
    use crate::scsi::alua::AluaState;
    let text = |state: &str| format!("[[portal_group]]\ntag = 2\nportals = [\"0.0.0.0:3261\"]\n{state}");
    let c = Config::from_toml(&text("alua_state = \"standby\"\n")).unwrap();
    assert_eq!(c.portal_groups[0].alua_state, AluaState::Standby);
    assert_eq!(Config::from_toml(&text("")).unwrap().portal_groups[0].alua_state, AluaState::ActiveOptimized);
    assert!(Config::from_toml(&text("alua_state = \"sleepy\"\n")).is_err());
    assert!(!c.to_toml().contains("active_optimized"), "the default is not written out");
}

#[test]
fn identities_are_locally_assigned_follow_an_s3_volume_and_can_be_configured() {
    let config = |target: &str, luns: &str| {
        Config::from_toml(&format!(
            "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:{target}\"\n{luns}"
        ))
    };
    let c = config(
        "a",
        "[[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n\
         [[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"1MiB\"\n\
         [[target.lun]]\nlun = 2\nbackend = \"memory\"\nsize = \"1MiB\"\nserial = \"SN-42\"\nnaa = \"0x3000000000000042\"\n",
    )
    .unwrap();
    let elsewhere = config("b", "[[target.lun]]\nlun = 7\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n").unwrap();
    let id = |c: &Config, l: usize| c.lu_config(&c.targets[0].name, &c.targets[0].luns[l], 512).identity;
    assert_eq!(id(&c, 0), id(&elsewhere, 0), "one S3 volume is one device, whatever its target and LUN number");
    assert_ne!(id(&c, 1).naa, id(&c, 0).naa);
    for l in [0, 1] {
        assert_eq!(id(&c, l).naa >> 60, 3, "locally assigned, not another vendor's company id");
    }
    assert_eq!((id(&c, 2).serial.as_str(), id(&c, 2).naa), ("SN-42", 0x3000_0000_0000_0042));
    let err = config(
        "a",
        "[[target.lun]]\nlun = 0\nbackend = \"memory\"\nsize = \"1MiB\"\nserial = \"has space\"\nnaa = \"0x1000000000000042\"\n\
         [[target.lun]]\nlun = 1\nbackend = \"memory\"\nsize = \"1MiB\"\nnaa = \"42\"\n",
    )
    .unwrap_err()
    .0
    .join("\n");
    for expected in ["serial: \"has space\" must be", "has NAA format 1", "naa: \"42\" is not 16 hex digits"] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn local_durability_and_the_disk_cache_need_a_cache_dir_and_nothing_else_takes_one() {
    let lun = |extra: &str| {
        format!(
            "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n{extra}"
        )
    };
    let err = Config::from_toml(&lun("durability = \"local\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("cache_dir: required for durability = \"local\""), "{err}");
    let err = Config::from_toml(&lun("cache_dir = \"/var/cache/rtgt\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("only used with durability = \"local\" or cache_disk_size"), "{err}");
    let err = Config::from_toml(&lun("cache_disk_size = \"10GiB\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("cache_dir: required for cache_disk_size"), "{err}");
    let err = Config::from_toml(&lun("cache_dir = \"/c\"\ncache_disk_size = \"1GiB\"\njournal_size = \"1GiB\"\n"))
        .unwrap_err()
        .0
        .join("\n");
    assert!(err.contains("journal_size: only used with durability = \"local\""), "{err}");
    let ok = Config::from_toml(&lun("cache_dir = \"/var/cache/rtgt\"\ncache_disk_size = \"10GiB\"\n")).unwrap();
    assert_eq!(ok.targets[0].luns[0].cache_disk_size, Some(Size(10 << 30)));
    let err = Config::from_toml(&lun("durability = \"remote\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("durability"), "{err}");
    let ok =
        Config::from_toml(&lun("durability = \"local\"\ncache_dir = \"/var/cache/rtgt\"\njournal_size = \"64MiB\"\n"))
            .unwrap();
    let l = &ok.targets[0].luns[0];
    assert_eq!((l.durability, l.journal_size), (Some(Durability::Local), Some(Size(64 << 20))));
}

#[test]
fn failover_is_for_s3_volumes_made_durable_in_the_store() {
    let lun = |backend: &str, extra: &str| {
        format!(
            "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"{backend}\"\n{extra}failover = true\n"
        )
    };
    let ok = Config::from_toml(&lun("s3", "url = \"s3://bucket/v\"\n")).unwrap();
    assert!(ok.targets[0].luns[0].failover);
    let err = Config::from_toml(&lun("file", "path = \"/srv/d.img\"\nsize = \"1GiB\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("failover: only for backend \"s3\""), "{err}");
    let local = "url = \"s3://bucket/v\"\ndurability = \"local\"\ncache_dir = \"/c\"\n";
    let err = Config::from_toml(&lun("s3", local)).unwrap_err().0.join("\n");
    assert!(err.contains("failover: needs durability = \"s3\""), "{err}");
}

#[test]
fn a_snapshot_is_served_read_only_beside_its_volume() {
    let luns = |extra: &str| {
        format!(
            "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n\
             [[target.lun]]\nlun = 0\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\n\
             [[target.lun]]\nlun = 1\nbackend = \"s3\"\nurl = \"s3://bucket/v\"\nsnapshot = \"daily\"\n{extra}"
        )
    };
    let ok = Config::from_toml(&luns("")).unwrap();
    assert_eq!(ok.targets[0].luns[1].snapshot.as_deref(), Some("daily"));
    let err = Config::from_toml(&luns("create = true\nsize = \"1GiB\"\n")).unwrap_err().0.join("\n");
    assert!(err.contains("snapshot: served read-only as it is"), "{err}");
    let bad = luns("").replace("\"daily\"", "\"a/b\"");
    assert!(Config::from_toml(&bad).unwrap_err().0.join("\n").contains("snapshot: snapshot name"));
    let file = "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n\
                [[target.lun]]\nlun = 0\nbackend = \"file\"\npath = \"/d.img\"\nsize = \"1GiB\"\nsnapshot = \"x\"\n";
    let err = Config::from_toml(file).unwrap_err().0.join("\n");
    assert!(err.contains("snapshot: only for backend \"s3\""), "{err}");
}

#[test]
fn an_encrypted_volume_takes_one_key_and_only_s3_encrypts() {
    let lun = |backend: &str, extra: &str| {
        format!(
            "[[portal_group]]\ntag = 1\nportals = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.2026-12.org.example:t\"\n[[target.lun]]\nlun = 0\nbackend = \"{backend}\"\n{extra}"
        )
    };
    let s3 = "url = \"s3://bucket/v\"\n";
    let ok = Config::from_toml(&lun("s3", &format!("{s3}encryption_passphrase_env = \"DB_PASS\"\n"))).unwrap();
    let source = ok.targets[0].luns[0].encryption_key().unwrap();
    assert_eq!(source, Some(KeySource::Passphrase(Held::Env("DB_PASS".into()))));
    let two = format!("{s3}encryption_key_file = \"/k\"\nencryption_key_env = \"K\"\n");
    let err = Config::from_toml(&lun("s3", &two)).unwrap_err().0.join("\n");
    assert!(err.contains("give one"), "{err}");
    let file = "path = \"/srv/d.img\"\nsize = \"1GiB\"\nencryption_key_file = \"/k\"\n";
    let err = Config::from_toml(&lun("file", file)).unwrap_err().0.join("\n");
    assert!(err.contains("encryption_*: only for backend \"s3\""), "{err}");
}

#[test]
fn busy_polling_is_bounded_and_reaches_the_settings() {
    let err = Config::from_toml("[server]\nbusy_poll_us = 20000\n").unwrap_err().0.join("\n");
    assert!(err.contains("server.busy_poll_us: at most 10000"), "{err}");
    let config = Config::from_toml("[server]\nbusy_poll_us = 0\n").unwrap();
    assert_eq!(config.settings().busy_poll, Duration::ZERO);
    let defaults = Config::from_toml("").unwrap();
    assert_eq!(defaults.settings().busy_poll, Duration::from_micros(DEFAULT_BUSY_POLL_US));
}

#[test]
fn workers_default_to_half_the_cpus_and_are_bounded() {
    let defaults = Config::from_toml("").unwrap();
    assert_eq!([1, 2, 4, 64].map(|cpus| defaults.server.worker_threads(cpus)), [1, 1, 2, 32]);
    let three = Config::from_toml("[server]\nworkers = 3\n").unwrap();
    assert_eq!(three.server.worker_threads(2), 3);
    let err = Config::from_toml("[server]\nworkers = 5000\n").unwrap_err().0.join("\n");
    assert!(err.contains("server.workers: at most 1024"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    let err = Config::from_toml("[server]\nqueue_dept = 3\n").unwrap_err();
    assert!(err.0[0].contains("queue_dept"), "{err}");
}

#[test]
fn embedded_default_is_valid() {
    Config::embedded_default(Path::new("/tmp/rtgt-test")).validate().unwrap();
}

/// One disk, one configuration entry: two LUNs may not share an identity (multipath would
/// take them for one disk, and they would share persistent reservations), nor a file under
/// two names (a hard link), nor may two targets have names that differ only in case.
#[test]
fn one_identity_one_file_and_one_name_per_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (file, link) = (dir.path().join("disk.img"), dir.path().join("link.img"));
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    std::fs::hard_link(&file, &link).unwrap();
    let text = format!(
        r#"
        [[portal_group]]
        tag = 1
        portals = ["127.0.0.1:3260"]
        [[target]]
        name = "eui.0123456789ABCDEF"
        [[target.lun]]
        lun = 0
        backend = "memory"
        size = "1MiB"
        naa = "0x5001405000000001"
        [[target.lun]]
        lun = 1
        backend = "memory"
        size = "1MiB"
        naa = "0x5001405000000001"
        [[target]]
        name = "eui.0123456789abcdef"
        [[target.lun]]
        lun = 0
        backend = "file"
        path = {file:?}
        [[target.lun]]
        lun = 1
        backend = "file"
        path = {link:?}
        "#
    );
    let err = Config::from_toml(&text).unwrap_err().0.join("\n");
    for expected in [
        "lun[1] (LUN 1).naa: 0x5001405000000001 is already the identity of target[0]",
        "target[1] (eui.0123456789abcdef).name: duplicate target name",
        "lun[1] (LUN 1).path: ",
        "under another name (a hard link",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
}
