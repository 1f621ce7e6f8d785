//! The article's experiment as orderings: who receives `*` before whom.
//!
//! Three clients connect in turn and stay until told to leave. With
//! `thread` all three are greeted before any leaves; with `pool -n 2` two
//! are, and the third only after one of them leaves; with `sequential`
//! each is greeted only after the one before it has left.

mod common;

use common::*;

#[test]
fn clients_are_admitted_as_the_article_shows() {
    for model in models() {
        let server = start_with(small_config(model));
        let addr = server.local_addr();
        let at_once = serves_at_once(model).min(3);

        check_admission(model, addr, 3, at_once);
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (3, 0), "{model}");
        assert_eq!(
            summary.max_clients, at_once as u64,
            "{model}: most clients served at once"
        );
    }
}
