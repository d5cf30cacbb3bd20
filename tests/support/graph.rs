//! The fake send API lives in the library (the load harness uses it too).

pub use switchboard::load::fake_graph::{wa_error, FakeGraph};
