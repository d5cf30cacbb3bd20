//! The load-test harness behind `switchboard load`: open-loop scenarios
//! against a server (its own, or `--target`), latency in HdrHistogram
//! measured from each request's intended send time, and an invariant
//! checker run against the database afterwards.

pub mod checker;
pub mod fake_graph;
