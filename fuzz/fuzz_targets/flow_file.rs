#![no_main]
//! See `switchboard::fuzzing::flow_file` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard::fuzzing::flow_file(data);
});
