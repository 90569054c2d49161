//! Steps: one action per item.

mod copy;
mod enqueue;
mod exists;

pub use copy::CopyStep;
pub use enqueue::EnqueueStep;
pub use exists::ExistsStep;
