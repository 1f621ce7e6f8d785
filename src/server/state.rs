//! The server's shared state: everything a model and its clients reach
//! for, in one place, built once per server.

use std::sync::Arc;

use super::config::ValidConfig;
use super::counters::Counters;
use super::memory::{Budget, Stacks};
use super::registry::Registry;
use crate::shutdown::Shutdown;

/// One running server's configuration, signal, limits, counters and
/// clients. Models and their clients hold it as `state`.
pub(crate) struct ServerState {
    pub(crate) config: ValidConfig,
    pub(crate) shutdown: Shutdown,
    /// The address-space limit, and the checks that keep within it.
    pub(crate) budget: Budget,
    /// Stacks of ended client threads or workers, there to be reused.
    pub(crate) stacks: Stacks,
    pub(crate) counters: Arc<Counters>,
    pub(crate) registry: Arc<Registry>,
}

impl ServerState {
    pub(crate) fn new(config: ValidConfig, shutdown: Shutdown, counters: Arc<Counters>) -> Self {
        let registry = Arc::new(Registry::new(
            config.max_conns,
            shutdown.clone(),
            Arc::clone(&counters),
        ));
        ServerState {
            config,
            shutdown,
            budget: Budget::from_rlimit(),
            stacks: Stacks::default(),
            counters,
            registry,
        }
    }

    /// A state of its own for a unit test; its counters are in it.
    #[cfg(test)]
    pub(crate) fn for_test(config: super::Config) -> Arc<ServerState> {
        let config = config.check().expect("a valid test configuration");
        Arc::new(ServerState::new(config, Shutdown::new(), Arc::default()))
    }
}
