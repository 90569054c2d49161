//! redrive's integration tests: the real binary, real SQLite, real servers (see `scripts/test`).

mod azure;
mod big;
mod children;
mod cli;
mod common;
mod crash;
mod faults;
mod kusto;
mod kusto_fake;
mod pg;
mod proxy;
mod resume;
mod s1;
mod s2;
mod s3;
mod s4;
mod s5;
mod secrets;
mod sqs;
mod state_disk;
mod upgrade;
