//! redrive's integration tests: the real binary, real SQLite, real servers (see `scripts/test`).

mod azure;
mod azure_reupload;
mod big;
mod children;
mod cli;
mod common;
mod crash;
mod crash_reprocessing;
mod daily_backfill;
mod faults;
mod gcs_server_copy;
mod kusto;
mod kusto_fake;
mod pg;
mod proxy;
mod report;
mod resume;
mod s3_server_copy;
mod s3_upload;
mod secrets;
mod sql_extract;
mod sqs;
mod state_disk;
mod upgrade;
mod work_lists;
