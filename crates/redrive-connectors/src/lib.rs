//! Sources and steps for redrive, with storage reached through Apache OpenDAL.

#![warn(missing_docs, unreachable_pub)]

pub mod storage;
