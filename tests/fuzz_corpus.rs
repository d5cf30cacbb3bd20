//! The fuzz corpora as regression tests: every stored input of every fuzz
//! target (`fuzz/corpus/<target>/`, seeds and inputs the fuzzer found
//! interesting) and every crash it ever found (`fuzz/regressions/<target>/`)
//! goes through the same check the target runs. Runs in CI with the rest of
//! the suite; the fuzzer itself runs with `cargo fuzz` (README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use switchboard::fuzzing;

type Check = fn(&[u8]) -> bool;

const TARGETS: [(&str, Check); 5] = [
    ("webhook_delivery", fuzzing::webhook_delivery),
    ("webhook_signature", fuzzing::webhook_signature),
    ("flow_file", fuzzing::flow_file),
    ("config_file", fuzzing::config_file),
    ("sse_event", fuzzing::sse_event),
];

/// Runs `check` over every file of `dir`: (files, well-formed ones).
fn replay(dir: &Path, check: Check) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut n, mut accepted) = (0, 0);
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        match std::panic::catch_unwind(|| check(&data)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("{} fails its check", path.display()),
        }
        n += 1;
    }
    (n, accepted)
}

#[test]
fn every_stored_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, check) in TARGETS {
        let (inputs, accepted) = replay(&root.join("corpus").join(target), check);
        assert!(inputs > 0, "fuzz/corpus/{target} has inputs");
        // Some inputs must get past the parser, or the properties never run.
        assert!(accepted > 0, "fuzz/corpus/{target}: no input reaches the checks");
        replay(&root.join("regressions").join(target), check);
        assert!(
            root.join("fuzz_targets").join(format!("{target}.rs")).exists(),
            "a fuzz target for {target}"
        );
    }
}

#[test]
fn malformed_inputs_stop_at_the_parser_without_a_panic() {
    assert!(!fuzzing::webhook_delivery(b"{\"object\":\"page\"}"));
    assert!(
        !fuzzing::webhook_delivery(&[b'['; 10_000]),
        "deep nesting is refused, not a stack overflow"
    );
    assert!(!fuzzing::flow_file(b"name = 1"));
    assert!(!fuzzing::config_file(b"[server]\nbindd = 1"));
    assert!(!fuzzing::config_file(&[0xFF, 0xFE]));
    assert!(fuzzing::webhook_signature(b""), "any bytes make a signature case");
    assert!(fuzzing::sse_event(b"\n\r\n"), "any bytes make an event");
}
