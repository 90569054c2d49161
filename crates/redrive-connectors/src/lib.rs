//! Sources and steps for redrive, with storage reached through Apache OpenDAL.

#![warn(missing_docs, unreachable_pub)]

mod aws_sign;
mod azure_account;
mod azure_auth;
mod batch;
mod build;
pub mod checksum;
pub mod diff;
#[doc(hidden)]
pub mod fuzz;
mod gcs_sign;
mod http_client;
mod local_file;
mod local_io;
pub mod plan;
mod queue;
mod response;
mod s3_bucket;
pub mod sources;
pub mod sql;
mod sqs;
pub mod steps;
pub mod storage;
pub mod upload;
pub mod xml;
pub use build::{BuildError, build, build_shard, build_with};
pub use plan::Plan;
