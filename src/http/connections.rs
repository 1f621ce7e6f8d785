//! The cap on the port's connections: who is idle since when, and how a
//! newcomer over the cap closes the connection idle the longest. Apart
//! from the routes because it is the one piece of shared, locked state
//! every connection's task touches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

/// The open connections, for the cap: since when each has been idle (no
/// request being answered), and the way to close it.
#[derive(Clone, Default)]
pub(super) struct Connections(Arc<Mutex<Open>>);

#[derive(Default)]
struct Open {
    next_id: u64,
    by_id: HashMap<u64, Slot>,
}

struct Slot {
    /// `None` while a request is being answered.
    idle_since: Option<Instant>,
    /// Dropped to close the connection: its task sees the receiver end.
    _evict: oneshot::Sender<()>,
}

impl Connections {
    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // Nothing here can panic while holding it; if it did, the map is
        // still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a newcomer in, evicting the longest idle connection if
    /// there are `max` already; `None` if all of them are being answered.
    pub(super) fn admit(&self, max: usize) -> Option<(Connection, oneshot::Receiver<()>)> {
        let mut open = self.open();
        if open.by_id.len() >= max {
            let oldest = open
                .by_id
                .iter()
                .filter_map(|(&id, slot)| Some((slot.idle_since?, id)))
                .min()?
                .1;
            open.by_id.remove(&oldest);
        }
        let id = open.next_id;
        open.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        open.by_id.insert(
            id,
            Slot {
                idle_since: Some(Instant::now()),
                _evict: evict,
            },
        );
        Some((
            Connection {
                id,
                connections: self.clone(),
            },
            evicted,
        ))
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(slot) = self.open().by_id.get_mut(&id) {
            slot.idle_since = idle.then(Instant::now);
        }
    }
}

/// A connection counted in; counted out when dropped.
pub(super) struct Connection {
    id: u64,
    connections: Connections,
}

impl Connection {
    /// Marks it as answering a request until the guard is dropped.
    pub(super) fn busy(&self) -> Busy {
        self.connections.set_idle(self.id, false);
        Busy {
            id: self.id,
            connections: self.connections.clone(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.connections.open().by_id.remove(&self.id);
    }
}

/// A request being answered.
pub(super) struct Busy {
    id: u64,
    connections: Connections,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connections.set_idle(self.id, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_evicts_the_longest_idle_and_spares_those_answering() {
        let connections = Connections::default();
        let (first, mut first_evicted) = connections.admit(2).unwrap();
        let (second, mut second_evicted) = connections.admit(2).unwrap();
        // The first is answering: the second, idle, goes for a third.
        let busy = first.busy();
        let (third, _third_evicted) = connections.admit(2).unwrap();
        assert!(second_evicted.try_recv().is_err(), "the second is closed");
        assert_eq!(
            first_evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the one answering stays"
        );
        drop(second);
        // With the first answering and the third idle, a fourth closes the
        // third; once both are answering, a fifth is refused.
        let (fourth, _fourth_evicted) = connections.admit(2).unwrap();
        assert!(!connections.open().by_id.contains_key(&third.id));
        let _also_busy = fourth.busy();
        assert!(connections.admit(2).is_none());
        // An answer sent makes the first idle again, and the oldest idle.
        drop(busy);
        assert!(connections.admit(2).is_some());
        assert!(first_evicted.try_recv().is_err());
    }
}
