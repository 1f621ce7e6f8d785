//! The pool that follows the load: it grows while every worker is busy
//! and clients wait, and shrinks back once workers sit idle.

mod common;

use std::time::Duration;

use common::*;
use concur::server::{Config, Model};

#[test]
fn the_pool_grows_under_load_and_shrinks_back() {
    let mut config = Config::new(Model::Pool).threads(1);
    let pool = config.pool_mut().unwrap();
    pool.max_threads = 4;
    pool.keep_alive = Duration::from_millis(200);
    let server = start_with(config);
    let addr = server.local_addr();
    // The server starts its workers on its own thread.
    wait_until(|| server.summary().pool_threads == 1);

    // Four clients at once: the one worker is busy at each arrival, so
    // the pool grows until all four are served.
    let mut clients: Vec<_> = (0..4).map(|_| connect_served(addr)).collect();
    assert_eq!(server.summary().pool_threads, 4);
    for c in clients.iter_mut() {
        round_trip(c);
    }

    // At its maximum it behaves as a fixed pool: the fifth waits.
    let mut fifth = connect(addr);
    assert!(silent_for(&mut fifth, WINDOW), "greeted beyond the maximum");
    drop(clients.remove(0));
    expect_ack(&mut fifth);
    round_trip(&mut fifth);
    assert_eq!(server.summary().pool_threads, 4);
    drop((clients, fifth));

    // Nothing to do for the keep-alive: back down to the minimum, and
    // still serving.
    wait_until(|| server.summary().pool_threads == 1);
    let (sends, want) = VECTORS[0];
    assert_eq!(session(addr, sends), want);
    let summary = server.stop();
    assert_eq!((summary.served, summary.failed), (6, 0));
    assert_eq!(summary.max_clients, 4);
}

#[test]
fn a_fixed_pool_keeps_its_size() {
    let server = start_with(Config::new(Model::Pool).threads(2));
    let addr = server.local_addr();
    let held: Vec<_> = (0..2).map(|_| connect_served(addr)).collect();
    let mut third = connect(addr);
    assert!(silent_for(&mut third, WINDOW));
    assert_eq!(server.summary().pool_threads, 2);
    drop((held, third));
    assert_eq!(server.stop().pool_threads, 2);
}

#[test]
fn clients_arriving_together_are_all_served_by_a_growing_pool() {
    // A worker that has just taken a client can still be counted idle for
    // a moment; a client arriving then must not wait, below the maximum,
    // for a worker that never frees. Many rounds of many clients at once
    // make that moment come.
    const AT_ONCE: usize = 8;
    for _ in 0..20 {
        let mut config = Config::new(Model::Pool).threads(1);
        config.pool_mut().unwrap().max_threads = AT_ONCE;
        let server = start_with(config);
        let addr = server.local_addr();
        let clients: Vec<_> = (0..AT_ONCE)
            .map(|_| std::thread::spawn(move || connect_served(addr)))
            .collect();
        let mut clients: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        for c in clients.iter_mut() {
            round_trip(c);
        }
        assert_eq!(server.summary().pool_threads, AT_ONCE as u64);
        drop(clients);
        server.stop();
    }
}
