//! The timeline every model records for the live page: each client's
//! accepted, admitted, first byte and end, in order, with the right end.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use concur::server::timeline::{Event, What};
use concur::server::{Config, Counters, Model};

/// Every event recorded so far.
fn events(counters: &Arc<Counters>) -> Vec<Event> {
    let mut out = Vec::new();
    let (_, missed) = counters.timeline().read(0, usize::MAX, &mut out);
    assert_eq!(missed, Ok(()), "nothing dropped in a test this small");
    out
}

/// What happened to `client`, in order.
fn of(events: &[Event], client: u64) -> Vec<What> {
    events
        .iter()
        .filter(|e| e.client == client)
        .map(|e| e.what)
        .collect()
}

/// The sequence number of `what` happening to `client`.
fn seq(events: &[Event], client: u64, what: What) -> u64 {
    events
        .iter()
        .find(|e| e.client == client && e.what == what)
        .unwrap_or_else(|| panic!("client {client} was never {what:?}: {events:?}"))
        .seq
}

#[test]
fn every_model_records_each_client_from_accept_to_its_end() {
    for model in models() {
        let config = Config::new(model).drain_timeout(Duration::from_millis(100));
        let server = start_with(config);
        let counters = server.counters();
        let mut first = connect_served(server.local_addr());
        round_trip(&mut first);
        drop(first);
        // Numbered in the order they were accepted: the first has ended
        // before the second arrives.
        wait_until(|| of(&events(&counters), 1).contains(&What::Served));
        let _stays = connect_served(server.local_addr());
        let summary = server.stop();
        assert_eq!(
            (summary.served, summary.closed_at_shutdown),
            (1, 1),
            "{model}"
        );

        let all = events(&counters);
        use What::*;
        assert_eq!(
            of(&all, 1),
            [Accepted, Admitted, FirstByte, Served],
            "{model}"
        );
        assert_eq!(
            of(&all, 2),
            [Accepted, Admitted, ClosedAtShutdown],
            "{model}"
        );
        assert!(
            all.windows(2)
                .all(|w| w[1].seq == w[0].seq + 1 && w[1].at_us >= w[0].at_us),
            "{model}: in order, on a monotonic clock"
        );
    }
}

#[test]
fn a_pool_client_waits_between_its_accept_and_its_admission() {
    // The article's picture: with one worker, the second client is
    // accepted while the first is served and taken on only when it leaves.
    let server = start_with(Config::new(Model::Pool).threads(1));
    let counters = server.counters();
    let mut first = connect_served(server.local_addr());
    let mut second = connect(server.local_addr());
    wait_until(|| of(&events(&counters), 2).contains(&What::Accepted));
    assert!(
        !of(&events(&counters), 2).contains(&What::Admitted),
        "the second is not taken on while the only worker is busy"
    );
    round_trip(&mut first);
    drop(first);
    expect_ack(&mut second);
    drop(second);
    server.stop();
    let all = events(&counters);
    assert!(seq(&all, 2, What::Accepted) < seq(&all, 1, What::Served));
    assert!(seq(&all, 1, What::Served) < seq(&all, 2, What::Admitted));
}

#[test]
fn a_rejected_client_is_recorded_as_such() {
    for model in models().into_iter().filter(|&m| m != Model::Sequential) {
        let mut config = Config::new(model);
        config.max_conns = 1;
        config.over_limit = concur::server::OverLimit::Reject;
        let server = start_with(config);
        let counters = server.counters();
        let mut first = connect_served(server.local_addr());
        let mut second = connect(server.local_addr());
        assert_eq!(read_to_end(&mut second), b"", "{model}: refused, no `*`");
        round_trip(&mut first);
        drop(first);
        server.stop();
        let all = events(&counters);
        assert_eq!(of(&all, 2), [What::Accepted, What::Rejected], "{model}");
    }
}
