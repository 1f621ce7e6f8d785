//! The table of a loop's (or a ring's) clients, with generational ids.
//!
//! A client's id is its place in the table and the generation of that
//! place: when a client leaves and another takes its place, the
//! generation moves on, so that news for the one who left (an event, a
//! completion, a computed answer) is recognised as stale rather than
//! delivered to a stranger. The table grows by doubling, and under an
//! address-space limit that growth is checked like any other allocation.

use std::io;

use super::memory::Budget;

/// Generations wrap at 24 bits, so that an id fits beside an 8-bit kind
/// in io_uring's 64-bit `user_data`.
pub(crate) const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A client's place in its table, and which of that place's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl ClientId {
    /// No client: what a loop's or ring's own operations name.
    pub(crate) const NONE: ClientId = ClientId {
        slot: 0,
        generation: 0,
    };

    /// As one number, for an event token or a reply: never `u64::MAX`.
    pub(crate) fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    pub(crate) fn from_u64(id: u64) -> Self {
        ClientId {
            slot: id as u32,
            generation: (id >> 32) as u32 & GENERATION_MASK,
        }
    }
}

struct Slot<T> {
    generation: u32,
    client: Option<T>,
}

/// The clients of one loop or ring.
pub(crate) struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for one more client (and its place in the free list),
    /// checked against the address-space limit: then
    /// [`insert`](Slots::insert) allocates nothing.
    pub(crate) fn room_for_one(&mut self, budget: &Budget) -> io::Result<()> {
        if !self.free.is_empty() || self.slots.len() < self.slots.capacity() {
            return Ok(());
        }
        let entry = std::mem::size_of::<Slot<T>>() + std::mem::size_of::<u32>();
        let growth = self.slots.capacity().max(4) * entry;
        budget.check(growth as u64)?;
        let oom = |e| io::Error::new(io::ErrorKind::OutOfMemory, format!("{e}"));
        self.slots.try_reserve(1).map_err(oom)?;
        let want = self.slots.capacity().saturating_sub(self.free.len());
        self.free.try_reserve(want).map_err(oom)
    }

    /// Places a client, after [`room_for_one`](Slots::room_for_one).
    pub(crate) fn insert(&mut self, client: T) -> ClientId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    client: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let place = &mut self.slots[slot as usize];
        place.client = Some(client);
        self.len += 1;
        ClientId {
            slot,
            generation: place.generation,
        }
    }

    pub(crate) fn get(&self, id: ClientId) -> Option<&T> {
        let place = self.slots.get(id.slot as usize)?;
        (place.generation == id.generation)
            .then_some(place.client.as_ref())
            .flatten()
    }

    pub(crate) fn get_mut(&mut self, id: ClientId) -> Option<&mut T> {
        let place = self.slots.get_mut(id.slot as usize)?;
        (place.generation == id.generation)
            .then_some(place.client.as_mut())
            .flatten()
    }

    /// Takes a client out; its place's next client has a new generation.
    pub(crate) fn remove(&mut self, id: ClientId) -> Option<T> {
        let place = self.slots.get_mut(id.slot as usize)?;
        if place.generation != id.generation {
            return None;
        }
        let client = place.client.take()?;
        place.generation = (place.generation + 1) & GENERATION_MASK;
        // Room was made by `room_for_one`: cannot allocate.
        self.free.push(id.slot);
        self.len -= 1;
        Some(client)
    }

    /// The ids of every client, for a sweep that may remove some.
    pub(crate) fn ids(&self) -> Vec<ClientId> {
        self.iter().map(|(id, _)| id).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ClientId, &T)> {
        self.slots.iter().enumerate().filter_map(|(slot, place)| {
            let id = ClientId {
                slot: slot as u32,
                generation: place.generation,
            };
            place.client.as_ref().map(|c| (id, c))
        })
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots
            .iter_mut()
            .filter_map(|place| place.client.as_mut())
    }

    /// Takes every client out, for a loop that fails.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let ids = self.ids();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_taken_again_is_told_apart() {
        let budget = Budget::new(None, || Ok(0));
        let mut slots = Slots::default();
        slots.room_for_one(&budget).unwrap();
        let a = slots.insert("a");
        assert_eq!(slots.get(a), Some(&"a"));
        assert_eq!(slots.remove(a), Some("a"));
        slots.room_for_one(&budget).unwrap();
        let b = slots.insert("b");
        assert_eq!(b.slot, a.slot, "the place is reused");
        assert_ne!(b, a);
        assert_eq!(slots.get(a), None, "news for the one who left is stale");
        assert_eq!(slots.remove(a), None);
        assert_eq!(slots.get_mut(b), Some(&mut "b"));
        assert_eq!(ClientId::from_u64(b.to_u64()), b);
        assert_eq!(slots.iter().count(), 1);
    }

    #[test]
    fn growth_past_the_limit_is_refused_and_nothing_is_placed() {
        let full = Budget::new(Some(1 << 20), || Ok(1 << 20));
        let mut slots: Slots<u8> = Slots::default();
        let e = slots.room_for_one(&full).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert!(slots.is_empty());
    }

    #[test]
    fn generations_wrap_within_their_bits() {
        let id = ClientId {
            slot: u32::MAX,
            generation: GENERATION_MASK,
        };
        assert_eq!(ClientId::from_u64(id.to_u64()), id);
        assert_ne!(id.to_u64(), u64::MAX);
    }
}
