//! The configuration file as the operator wrote it: a change made through the API is written
//! into the file's own text, so its comments, key order and layout stay. Only what changed is
//! rewritten: a changed value keeps the comments around it, a removed key or table goes, a new
//! one is added at the end of its table. Targets, LUNs and portal groups are matched by their
//! name, LUN number and tag, so a change to one leaves the others' text alone.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::config::Config;

/// The text of a configuration file holding `config`, written into `old` (the file as it is).
/// A file that does not parse as TOML is replaced by the plain serialization.
pub fn updated_text(old: &str, config: &Config) -> String {
    let fresh = config.to_toml();
    let (Ok(mut doc), Ok(new)) = (old.parse::<DocumentMut>(), fresh.parse::<DocumentMut>()) else {
        return fresh;
    };
    // What the file meant, serialized: the settings it leaves out are there with their
    // defaults, and are not written into the file unless the change is to them.
    let meant = Config::from_toml(old).map(|c| c.to_toml()).unwrap_or_default();
    let meant = meant.parse::<DocumentMut>().unwrap_or_default();
    merge_table(doc.as_table_mut(), Some(meant.as_table()), new.as_table());
    let merged = doc.to_string();
    // The file must say exactly what runs: should the merge ever get it wrong, the plain
    // serialization (comments and layout lost) is better than a file that will not load.
    match Config::from_toml(&merged) {
        Ok(read_back) if read_back == *config => merged,
        _ => {
            tracing::warn!("the configuration file could not keep its layout: rewritten whole");
            fresh
        }
    }
}

/// An item of the fresh serialization, without its place in that document: written into the
/// file's document, a table goes after the tables before it there (a new target after the
/// last LUN of the one before it), not at its place in the other document.
fn unplaced(item: &Item) -> Item {
    match item {
        Item::Table(t) => Item::Table(unplaced_table(t)),
        Item::ArrayOfTables(a) => Item::ArrayOfTables(a.iter().map(unplaced_table).collect()),
        other => other.clone(),
    }
}

fn unplaced_table(table: &Table) -> Table {
    let mut out = Table::new();
    out.set_implicit(table.is_implicit());
    *out.decor_mut() = table.decor().clone();
    for (key, item) in table.iter() {
        out.insert(key, unplaced(item));
    }
    out
}

/// The key that names an element of an array of tables, by the array's key.
fn identity_key(array: &str) -> Option<&'static str> {
    match array {
        "target" => Some("name"),
        "lun" => Some("lun"),
        "portal_group" => Some("tag"),
        _ => None,
    }
}

/// `old` is the file's table, `meant` the same table as the file's configuration serializes
/// (if there is one), `new` the table to write.
fn merge_table(old: &mut Table, meant: Option<&Table>, new: &Table) {
    let gone: Vec<String> = old.iter().map(|(k, _)| k.to_string()).filter(|k| !new.contains_key(k)).collect();
    for key in gone {
        old.remove(&key);
    }
    for (key, item) in new.iter() {
        let meant_item = meant.and_then(|m| m.get(key));
        match old.get_mut(key) {
            Some(existing) if std::mem::discriminant(existing) == std::mem::discriminant(item) => {
                merge_item(key, existing, meant_item, item)
            }
            // A value that becomes tables (an empty `lun = []` that gains a LUN): a new key,
            // without the spacing the value had around it (`[[target.lun ]]`).
            Some(_) => {
                old.remove(key);
                old.insert(key, unplaced(item));
            }
            // Left out of the file, and the change is not to it: still left out.
            None if meant_item.is_some_and(|m| same_item(m, item)) => {}
            None => {
                old.insert(key, unplaced(item));
            }
        }
    }
}

fn merge_item(key: &str, old: &mut Item, meant: Option<&Item>, new: &Item) {
    match (old, new) {
        (Item::Table(o), Item::Table(n)) => merge_table(o, meant.and_then(Item::as_table), n),
        (Item::ArrayOfTables(o), Item::ArrayOfTables(n)) => {
            merge_array(key, o, meant.and_then(Item::as_array_of_tables), n)
        }
        (Item::Value(o), Item::Value(n)) => merge_value(o, n),
        (o, n) => *o = unplaced(n),
    }
}

/// A value that did not change keeps its text; one that did takes the new value inside the
/// old one's decoration (the comments and spacing around it).
fn merge_value(old: &mut Value, new: &Value) {
    if same_value(old, new) {
        return;
    }
    let decor = old.decor().clone();
    *old = new.clone();
    *old.decor_mut() = decor;
}

/// Equal as data, whatever their text (quotes, spacing, inline or not).
fn same_value(a: &Value, b: &Value) -> bool {
    let bare = |v: &Value| {
        let mut v = v.clone();
        v.decor_mut().clear();
        if let Value::Array(a) = &mut v {
            a.fmt();
        }
        if let Value::InlineTable(t) = &mut v {
            t.fmt();
        }
        v.to_string()
    };
    bare(a) == bare(b)
}

fn same_item(a: &Item, b: &Item) -> bool {
    match (a, b) {
        (Item::Value(a), Item::Value(b)) => same_value(a, b),
        (a, b) => a.to_string() == b.to_string(),
    }
}

/// Elements are matched by their identity (or position, for arrays without one); the new
/// array's order and membership win, and a matched element keeps its text where it did not
/// change.
fn merge_array(key: &str, old: &mut ArrayOfTables, meant: Option<&ArrayOfTables>, new: &ArrayOfTables) {
    let id = identity_key(key);
    let identity = |t: &Table| id.and_then(|k| t.get(k)).map(|v| v.to_string().trim().to_string());
    let find = |tables: &[Option<Table>], n: &Table, i: usize| match identity(n) {
        Some(want) => tables.iter().position(|o| o.as_ref().is_some_and(|o| identity(o).as_ref() == Some(&want))),
        None => (i < tables.len() && tables[i].is_some()).then_some(i),
    };
    let mut remaining: Vec<Option<Table>> = old.iter().cloned().map(Some).collect();
    let meant: Vec<Option<Table>> = meant.map(|m| m.iter().cloned().map(Some).collect()).unwrap_or_default();
    let mut merged = ArrayOfTables::new();
    for (i, n) in new.iter().enumerate() {
        let meant_table = find(&meant, n, i).and_then(|at| meant[at].as_ref());
        let mut table = match find(&remaining, n, i).and_then(|at| remaining[at].take()) {
            Some(mut o) => {
                merge_table(&mut o, meant_table, n);
                o
            }
            None => unplaced_table(n),
        };
        table.set_implicit(false);
        merged.push(table);
    }
    *old = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# rtgt on the storage box. Ask Ana before changing portals.

[[portal_group]]
tag = 1
portals = ["127.0.0.1:3260"]   # loopback only, for now

[[target]]
name = "iqn.2026-12.org.example:db"
alias = "database"

# The database's data disk.
[[target.lun]]
lun = 0
backend = "memory"
size = "64MiB"   # grows with the data

# Scratch space.
[[target.lun]]
lun = 1
backend = "memory"
size = "16MiB"
"#;

    #[test]
    fn a_change_keeps_the_operators_comments_and_layout() {
        let mut config = Config::from_toml(FILE).unwrap();
        assert_eq!(updated_text(FILE, &config), FILE, "nothing changed, nothing rewritten");
        config.targets[0].luns[0].size = Some(crate::config::Size(128 << 20));
        config.targets[0].luns.remove(1);
        let mut added = crate::config::LunConfig::new(2, crate::config::Backend::Memory);
        added.size = Some(crate::config::Size(8 << 20));
        config.targets[0].luns.push(added);
        let text = updated_text(FILE, &config);
        for kept in [
            "# rtgt on the storage box. Ask Ana before changing portals.",
            "portals = [\"127.0.0.1:3260\"]   # loopback only, for now",
            "# The database's data disk.",
            "alias = \"database\"",
        ] {
            assert!(text.contains(kept), "{kept:?} lost:\n{text}");
        }
        assert!(text.contains("size = \"128MiB\"   # grows with the data"), "{text}");
        assert!(!text.contains("Scratch space") && !text.contains("16MiB"), "LUN 1 is gone:\n{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), config, "the file holds the new configuration:\n{text}");
    }

    /// A new target goes after the last LUN of the one before it: written at its place in the
    /// fresh serialization, it landed between them and took their LUNs (seen: a file that
    /// would not load, "duplicate key `lun`").
    #[test]
    fn a_new_target_or_lun_goes_after_what_is_there() {
        let file = format!(
            "[server]\ndata_dir = \"/var/lib/rtgt\"\n\n[api]\nlisten = \"127.0.0.1:3261\"\n\n[embedded_s3]\nlisten = \"off\"\n\n{FILE}"
        );
        let mut config = Config::from_toml(&file).unwrap();
        config.targets.push(crate::config::TargetConfig::new("iqn.2026-12.org.example:new"));
        let text = updated_text(&file, &config);
        assert_eq!(Config::from_toml(&text).unwrap(), config, "{text}");
        assert!(text.contains("# Scratch space."), "the layout is kept:\n{text}");
        let mut added = crate::config::LunConfig::new(0, crate::config::Backend::Memory);
        added.size = Some(crate::config::Size(8 << 20));
        config.targets[1].luns.push(added);
        config.targets.push(crate::config::TargetConfig::new("iqn.2026-12.org.example:third"));
        let text = updated_text(&text, &config);
        assert_eq!(Config::from_toml(&text).unwrap(), config, "{text}");
        config.targets[0].luns.clear();
        let text = updated_text(&text, &config);
        assert_eq!(Config::from_toml(&text).unwrap(), config, "{text}");
        assert!(text.contains("# rtgt on the storage box."), "the layout is kept:\n{text}");
        assert!(!text.contains("lun ]]"), "an empty `lun = []` left its spacing in the new LUN's header:\n{text}");
    }

    #[test]
    fn a_file_that_is_not_toml_is_replaced() {
        let config = Config::from_toml(FILE).unwrap();
        assert_eq!(updated_text("not = [toml", &config), config.to_toml());
    }
}
