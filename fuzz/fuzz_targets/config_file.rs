#![no_main]
//! See `switchboard::fuzzing::config_file` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard::fuzzing::config_file(data);
});
