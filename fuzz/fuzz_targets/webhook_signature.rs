#![no_main]
//! See `switchboard::fuzzing::webhook_signature` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard::fuzzing::webhook_signature(data);
});
