//! The core against the byte-at-a-time reference, for any input and any
//! way of splitting it into reads.

mod common;

use common::reference;
use concur::protocol::{Processor, State};
use proptest::prelude::*;

/// Inputs rich in the two special bytes, so that messages actually open and
/// close, plus arbitrary bytes (0xFF among them).
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(b'^'),
            3 => Just(b'$'),
            1 => Just(0xFF),
            10 => any::<u8>(),
        ],
        0..2048,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_split_matches_the_reference(
        input in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut p = Processor::new();
        let mut out = Vec::new();
        let mut from = 0;
        for to in points.into_iter().chain([input.len()]) {
            let before = out.len();
            p.feed(&input[from..to], &mut out);
            prop_assert!(out.len() - before <= to - from, "output never outgrows input");
            from = to;
        }
        prop_assert_eq!(&out, &reference(&input));

        let in_message = input.iter().fold(false, |inside, &b| match (inside, b) {
            (false, b'^') => true,
            (true, b'$') => false,
            (s, _) => s,
        });
        let want = if in_message { State::InMessage } else { State::Waiting };
        prop_assert_eq!(p.state(), want);
    }

    #[test]
    fn one_byte_reads_match_the_reference(input in stream()) {
        let mut p = Processor::new();
        let mut out = Vec::new();
        for b in &input {
            p.feed(std::slice::from_ref(b), &mut out);
        }
        prop_assert_eq!(out, reference(&input));
    }
}
