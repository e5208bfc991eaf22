//! Black-box tests: each test starts the real `ferrobase` binary and speaks HTTP to it.
//! Behaviour suites run on SQLite and on Postgres (`on_both_backends!`).

#![expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]

mod helpers;

mod agreement;
mod auth;
mod auth_hostile;
mod auth_providers;
mod contract;
mod documents;
mod durability;
mod functions;
mod hostile_input;
mod queries;
mod realtime;
mod rules;
mod rules_agreement;
mod rules_matrix;
mod storage;
mod system;
