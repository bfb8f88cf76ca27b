//! Replays the checked-in fuzz corpora (fuzz/corpus/<target>/) through the fuzz entry points,
//! so that every input that ever found a bug stays a regression test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "{} has no corpus files", dir.display());
}

#[test]
fn pdu_decode_corpus() {
    replay("pdu_decode", rtgt_testkit::fuzzing::pdu_decode);
}

#[test]
fn text_parse_corpus() {
    replay("text_parse", rtgt_testkit::fuzzing::text_parse);
}

#[test]
fn login_corpus() {
    replay("login", rtgt_testkit::fuzzing::login);
}

#[test]
fn volume_format_corpus() {
    replay("volume_format", rtgt_testkit::fuzzing::volume_format);
}

#[test]
fn access_corpus() {
    replay("access", rtgt_testkit::fuzzing::access);
}
