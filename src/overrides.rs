//! What `rtgt serve`'s flags change for this run only (`--data-dir`, `--listen`, `--force`,
//! `--api-listen`, `--s3-listen`): applied over the configuration file at start and at every
//! reload, and kept out of what the API saves into that file. Saved, they would outlive the run:
//! every LUN forced at each start, the portals of a one-off `--listen` for good.

use std::path::PathBuf;

use crate::config::Config;

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    /// Every portal group listens here.
    pub listen: Option<String>,
    /// Every LUN takes its S3 volume over from a live holder.
    pub force: bool,
    pub api_listen: Option<String>,
    pub s3_listen: Option<String>,
}

impl Overrides {
    /// `file` as this run serves it.
    pub fn apply(&self, file: &Config) -> Config {
        let mut config = file.clone();
        if let Some(dir) = &self.data_dir {
            config.server.data_dir = Some(dir.clone());
        }
        if self.force {
            for lun in config.targets.iter_mut().flat_map(|t| &mut t.luns) {
                lun.force = true;
            }
        }
        if let Some(addr) = &self.listen {
            for pg in &mut config.portal_groups {
                pg.portals = vec![addr.clone()];
            }
        }
        if let Some(addr) = &self.api_listen {
            config.api.listen = addr.clone();
        }
        if let (Some(addr), Some(e)) = (&self.s3_listen, config.embedded_s3.as_mut()) {
            e.listen = addr.clone();
        }
        config
    }

    /// Why the change from `running` to `edited` (before the overrides) cannot be served as
    /// asked: in a run with `--listen` every portal group listens on that address, so a portal
    /// added or removed, or a group made, would be saved and answered as done but never served.
    pub fn hides(&self, running: &Config, edited: &Config) -> Option<String> {
        let listen = self.listen.as_ref()?;
        let changed = edited
            .portal_groups
            .iter()
            .any(|pg| running.portal_groups.iter().find(|r| r.tag == pg.tag).is_none_or(|r| r.portals != pg.portals));
        changed.then(|| {
            format!(
                "this run listens on {listen} for every portal group (rtgt serve --listen): portals cannot change \
                 until it is restarted without --listen"
            )
        })
    }

    /// `running` as the file should hold it: what the overrides set comes back from `file`
    /// (the file as last read or saved); everything else, changes made since included, stays.
    pub fn strip(&self, running: &Config, file: &Config) -> Config {
        let mut config = running.clone();
        if self.data_dir.is_some() {
            config.server.data_dir = file.server.data_dir.clone();
        }
        if self.force {
            for t in &mut config.targets {
                let saved = file.targets.iter().find(|s| s.name == t.name);
                for lun in &mut t.luns {
                    let was = saved.and_then(|s| s.luns.iter().find(|l| l.lun == lun.lun));
                    lun.force = was.is_some_and(|l| l.force);
                }
            }
        }
        if self.listen.is_some() {
            for pg in &mut config.portal_groups {
                if let Some(saved) = file.portal_groups.iter().find(|s| s.tag == pg.tag) {
                    pg.portals = saved.portals.clone();
                }
            }
        }
        if self.api_listen.is_some() {
            config.api.listen = file.api.listen.clone();
        }
        if let (Some(_), Some(e), Some(saved)) = (&self.s3_listen, config.embedded_s3.as_mut(), &file.embedded_s3) {
            e.listen = saved.listen.clone();
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunConfig;

    #[test]
    fn what_the_flags_set_is_served_but_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = Config::embedded_default(dir.path());
        let overrides = Overrides {
            data_dir: Some("/elsewhere".into()),
            listen: Some("127.0.0.1:3999".into()),
            force: true,
            api_listen: Some("off".into()),
            s3_listen: Some("off".into()),
        };
        let mut running = overrides.apply(&file);
        assert!(running.targets.iter().flat_map(|t| &t.luns).all(|l| l.force));
        assert!(running.portal_groups.iter().all(|pg| pg.portals == ["127.0.0.1:3999"]));
        assert_eq!(running.api.listen, "off");
        // A change made through the API while it runs (a LUN added, forced too) is kept.
        let mut added = LunConfig::new(9, crate::config::Backend::Memory);
        added.size = Some(crate::config::Size(1 << 20));
        added.force = true;
        running.targets[0].luns.push(added);
        let saved = overrides.strip(&running, &file);
        assert_eq!(saved.server.data_dir, file.server.data_dir);
        assert_eq!(saved.portal_groups, file.portal_groups);
        assert_eq!(saved.api.listen, file.api.listen);
        assert_eq!(saved.embedded_s3.as_ref().map(|e| &e.listen), file.embedded_s3.as_ref().map(|e| &e.listen));
        assert!(saved.targets.iter().flat_map(|t| &t.luns).all(|l| !l.force), "no LUN saved forced");
        assert_eq!(saved.targets[0].luns.last().map(|l| l.lun), Some(9), "the API's change is saved");
        assert_eq!(overrides.apply(&saved).portal_groups, running.portal_groups);
    }
}
