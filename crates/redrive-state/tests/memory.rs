//! The in-memory store (redrive-core's, for the engine's tests) keeps the same contract as
//! the durable ones.

use redrive_core::state::StateStore;
use redrive_core::state::memory::MemoryStateStore;
use redrive_state::conformance;

#[tokio::test]
async fn the_memory_store_passes_the_conformance_suite() {
    let factory =
        || Box::pin(async { Box::new(MemoryStateStore::new()) as Box<dyn StateStore> }) as _;
    conformance::run_all(&factory).await;
}
