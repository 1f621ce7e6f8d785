//! The article's experiment as orderings: who receives `*` before whom.
//!
//! Three clients connect in turn and stay until told to leave. With
//! `thread` all three are greeted before any leaves; with `pool -n 2` two
//! are, and the third only after one of them leaves; with `sequential`
//! each is greeted only after the one before it has left.

mod common;

use std::time::Duration;

use common::*;
use concur::server::Model;

/// Long enough for a wrongly sent `*` to arrive over loopback; a correct
/// server sends none, so it passes whatever this is.
const WINDOW: Duration = Duration::from_millis(300);

#[test]
fn clients_are_admitted_as_the_article_shows() {
    for model in Model::ALL {
        let server = start_with(small_config(model));
        let addr = server.local_addr();
        let at_once = serves_at_once(model).min(3);

        let mut clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
        for c in clients.iter_mut().take(at_once) {
            expect_ack(c);
            round_trip(c);
        }
        for (i, c) in clients.iter_mut().enumerate().skip(at_once) {
            assert!(
                silent_for(c, WINDOW),
                "{model}: client {i} was greeted while {at_once} were being served"
            );
        }

        // The first leaves: exactly the next waiting client is admitted.
        let mut waiting: Vec<_> = clients.drain(at_once..).collect();
        let mut served: Vec<_> = clients;
        while !waiting.is_empty() {
            drop(served.remove(0));
            let mut next = waiting.remove(0);
            expect_ack(&mut next);
            round_trip(&mut next);
            for (i, c) in waiting.iter_mut().enumerate() {
                assert!(
                    silent_for(c, WINDOW),
                    "{model}: waiting client {i} was greeted out of turn"
                );
            }
            // Those still being served are unaffected by the change.
            for c in served.iter_mut() {
                round_trip(c);
            }
            served.push(next);
        }
        drop(served);
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (3, 0), "{model}");
        assert_eq!(
            summary.max_clients, at_once as u64,
            "{model}: most clients served at once"
        );
    }
}
