//! Steps: one action per item.

mod copy;
mod enqueue;
mod exists;
mod http;
mod require;
mod run;
mod sql_insert;
mod xml;

pub use copy::CopyStep;
pub use enqueue::EnqueueStep;
pub use exists::ExistsStep;
pub use http::HttpStep;
pub use require::Required;
pub use run::RunStep;
pub use sql_insert::SqlInsertStep;
pub use xml::XmlStep;
