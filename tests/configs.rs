//! Configuration files written for earlier versions keep loading: the examples of every
//! README since the first (`tests/fixtures/configs/DATE-COMMIT-N.toml`) parse and validate.
//! A change that breaks one needs a migration, not an edit of the fixture.

use rtgt::config::Config;

#[test]
fn configurations_of_earlier_versions_keep_loading() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Config::from_toml(&text) {
            panic!("{}: {}", path.display(), e.0.join("; "));
        }
        checked += 1;
    }
    assert!(checked >= 8, "the fixtures are there: {checked}");
}
