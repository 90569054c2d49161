//! Steps: one action per item.

mod copy;
mod exists;

pub use copy::CopyStep;
pub use exists::ExistsStep;
