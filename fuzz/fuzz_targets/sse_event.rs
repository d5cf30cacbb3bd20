#![no_main]
//! See `switchboard::fuzzing::sse_event` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard::fuzzing::sse_event(data);
});
