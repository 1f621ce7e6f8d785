//! PROTOCOL.md's vectors, end to end, over every model.

mod common;

use std::io::Write;
use std::thread;

use common::*;
use concur::protocol::Processor;

#[test]
fn the_core_answers_every_vector() {
    for (sends, want) in VECTORS {
        let mut p = Processor::new();
        let mut out = Vec::new();
        for s in *sends {
            p.feed(s, &mut out);
        }
        assert_eq!(out, *want, "sends {sends:?}");
    }
}

#[test]
fn every_model_answers_every_vector() {
    for model in models() {
        let server = start(model);
        for (sends, want) in VECTORS {
            let got = session(server.local_addr(), sends);
            assert_eq!(got, *want, "{model}: sends {sends:?}");
        }
        let summary = server.stop();
        assert_eq!(summary.served, VECTORS.len() as u64, "{model}");
        assert_eq!(summary.failed, 0, "{model}");
    }
}

/// Waiting for each answer before the next send forces the server to see
/// the sends as separate reads, so state must carry over between them.
#[test]
fn every_model_keeps_state_across_reads() {
    for model in models() {
        let server = start(model);
        let mut s = connect_served(server.local_addr());
        let steps: &[(&[u8], &[u8])] = &[
            (b"xx^a", b"b"),
            (b"b", b"c"),
            (b"$zz^", b""),
            (b"^\xff$", b"_\x00"),
            (b"^q", b"r"),
        ];
        for (send, want) in steps {
            s.write_all(send).unwrap();
            assert_eq!(read_n(&mut s, want.len()), *want, "{model}: after {send:?}");
        }
        // Every send ends in a state with all answers delivered; an
        // answer-less one is confirmed by the next step's exact reply.
        drop(s);
        server.stop();
    }
}

#[test]
fn a_message_that_arrives_in_pieces_is_answered_whole() {
    // Each piece is its own segment (no Nagle), so the server's reads come
    // back short, one piece at a time: a server that stopped reading after
    // a short read and missed the next arrival would leave the answer
    // incomplete.
    const PIECES: usize = 200;
    const PIECE: usize = 50;
    for model in models() {
        let server = start(model);
        let mut s = connect_served(server.local_addr());
        s.set_nodelay(true).unwrap();
        let reader = {
            let mut s = s.try_clone().unwrap();
            thread::spawn(move || read_n(&mut s, PIECES * PIECE))
        };
        s.write_all(b"^").unwrap();
        for i in 0..PIECES {
            s.write_all(&[b'a' + (i % 26) as u8; PIECE]).unwrap();
            if i % 10 == 0 {
                thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        s.write_all(b"$").unwrap();
        let want: Vec<u8> = (0..PIECES)
            .flat_map(|i| [b'b' + (i % 26) as u8; PIECE])
            .collect();
        assert!(reader.join().unwrap() == want, "{model}: not the answers");
        drop(s);
        let summary = server.stop();
        assert_eq!(summary.bytes_in, (PIECES * PIECE + 2) as u64, "{model}");
    }
}

#[test]
fn concurrent_clients_keep_separate_state() {
    for model in models() {
        let server = start(model);
        let addr = server.local_addr();
        let clients: Vec<_> = (0..16)
            .map(|i| {
                thread::spawn(move || {
                    let (sends, want) = VECTORS[i % VECTORS.len()];
                    assert_eq!(session(addr, sends), want, "client {i}");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (16, 0), "{model}");
    }
}
