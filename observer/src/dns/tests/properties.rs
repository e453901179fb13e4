//! Property tests: no input panics, rejections have the right kind, chains resolve as a
//! simple model says, and the cache keeps its books straight under any sequence of calls.
//! Bounded to run in seconds with plain `cargo test`; `fuzz/` runs the same paths unbounded.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::{a, bytes, chain_response, cname, response};
use crate::dns::{Answers, DnsNames, MAX_CNAME_HOPS, MAX_MESSAGE_LEN, ParseError, parse};

/// What any successful parse guarantees.
fn check_answers(answers: &Answers) {
    assert!(!answers.names.is_empty());
    assert!(answers.names.len() <= MAX_CNAME_HOPS + 1);
    for name in &answers.names {
        assert_eq!(*name, name.to_ascii_lowercase());
        assert!(name == "." || !ends_with_unescaped_dot(name), "{name:?}");
    }
    for (i, address) in answers.addresses.iter().enumerate() {
        assert!(address.hops < answers.names.len());
        assert!(i32::try_from(address.ttl).is_ok());
        assert!(
            !answers.addresses[..i]
                .iter()
                .any(|o| o.addr == address.addr)
        );
    }
}

/// Whether the name's text ends with the root's dot rather than an escaped `\.` inside a label
/// (an odd number of backslashes before the final dot escapes it).
fn ends_with_unescaped_dot(name: &str) -> bool {
    let Some(rest) = name.strip_suffix('.') else {
        return false;
    };
    let backslashes = rest.bytes().rev().take_while(|&b| b == b'\\').count();
    backslashes % 2 == 0
}

/// Parses, records and looks up every address, in two scopes.
fn drive(message: &[u8]) -> Result<Answers, ParseError> {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(8, Duration::from_secs(5));
    let outcome = cache.ingest(7, message, t0);
    if let Ok(answers) = &outcome {
        check_answers(answers);
        for address in &answers.addresses {
            let named = cache.name_for(7, address.addr, t0);
            assert!(named.is_none() || named == Some(answers.question()));
            assert_eq!(cache.name_for(8, address.addr, t0), None);
            assert!(cache.names_for(7, address.addr, t0).count() <= answers.names.len());
        }
    }
    cache.assert_consistent();
    outcome
}

fn valid_messages() -> Vec<Vec<u8>> {
    vec![
        chain_response(),
        bytes(&response(
            "a.example.",
            vec![
                cname("a.example.", 100, "b.example."),
                cname("b.example.", 50, "a.example."),
                a("b.example.", 300, [192, 0, 2, 4]),
            ],
        )),
        bytes(&response(
            "x.example.",
            vec![a("x.example.", 1, [192, 0, 2, 1])],
        )),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn mutate(mut message: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = message.len().max(1);
        match *m {
            Mutation::Set(at, byte) => {
                if let Some(b) = message.get_mut(at % len) {
                    *b = byte;
                }
            }
            Mutation::Insert(at, byte) => message.insert(at % (message.len() + 1), byte),
            Mutation::Remove(at) => {
                if !message.is_empty() {
                    message.remove(at % len);
                }
            }
        }
    }
    message
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

/// A chain question → c1 → … → c{links} with addresses on the last name, as records in a
/// shuffled order, with the expected minimum TTL of each address.
#[derive(Clone, Debug)]
struct Chain {
    cname_ttls: Vec<u32>,
    address_ttls: Vec<(u8, u32)>,
    order: Vec<usize>,
}

fn chain() -> impl Strategy<Value = Chain> {
    let ttl = prop_oneof![0u32..100_000, Just(u32::MAX), Just(0x8000_0000u32)];
    (
        proptest::collection::vec(ttl.clone(), 0..6),
        proptest::collection::btree_map(any::<u8>(), ttl, 1..5),
    )
        .prop_flat_map(|(cname_ttls, addresses)| {
            let address_ttls: Vec<(u8, u32)> = addresses.into_iter().collect();
            let n = cname_ttls.len() + address_ttls.len();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (Just(cname_ttls), Just(address_ttls), order)
        })
        .prop_map(|(cname_ttls, address_ttls, order)| Chain {
            cname_ttls,
            address_ttls,
            order,
        })
}

fn rfc2181(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

#[derive(Clone, Debug)]
enum Op {
    Record {
        netns: u32,
        question: u8,
        ip: u8,
        ttl: u32,
    },
    Advance(u64),
    Expire,
    Forget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..3, 0u8..6, 0u8..6, 0u32..20)
            .prop_map(|(netns, question, ip, ttl)| Op::Record { netns, question, ip, ttl }),
        3 => (0u64..15).prop_map(Op::Advance),
        1 => Just(Op::Expire),
        1 => (0u32..3).prop_map(Op::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(message in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = drive(&message);
    }

    /// Arbitrary bytes behind a valid response header and question: the decoder gets as far as
    /// the answers, where most of the work is.
    #[test]
    fn arbitrary_answers_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600), count in 0u16..8) {
        let mut message = bytes(&response("q.example.", vec![]));
        message[6..8].copy_from_slice(&count.to_be_bytes());
        message.extend_from_slice(&tail);
        let _ = drive(&message);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..3,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let message = mutate(valid_messages().swap_remove(which), &mutations);
        let _ = drive(&message);
    }

    #[test]
    fn strict_prefixes_are_truncated(which in 0usize..3, cut in any::<prop::sample::Index>()) {
        let message = valid_messages().swap_remove(which);
        let len = cut.index(message.len());
        prop_assert_eq!(drive(&message[..len]).map(|_| ()), Err(ParseError::Truncated));
    }

    #[test]
    fn oversized_messages_are_rejected_unread(extra in 1usize..2048, fill in any::<u8>()) {
        let mut message = chain_response();
        message.resize(MAX_MESSAGE_LEN + extra, fill);
        prop_assert_eq!(drive(&message).map(|_| ()), Err(ParseError::Oversized));
    }

    /// A pointer to itself or forward, at any name position of a valid message, is a loop.
    #[test]
    fn self_pointers_are_loops(which in 0usize..3, at_name in any::<prop::sample::Index>()) {
        let mut message = valid_messages().swap_remove(which);
        // Name starts: the question at 12, and every answer owner the encoder compressed to a
        // pointer (0xc0 0x0c) right after the question's fixed fields.
        let mut starts = vec![12usize];
        starts.extend((13..message.len().saturating_sub(1)).filter(|&i| message[i] == 0xc0 && message[i + 1] == 0x0c));
        let start = starts[at_name.index(starts.len())];
        let [hi, lo] = (0xc000u16 | start as u16).to_be_bytes();
        message[start] = hi;
        message[start + 1] = lo;
        prop_assert_eq!(drive(&message).map(|_| ()), Err(ParseError::PointerLoop));
    }

    #[test]
    fn chains_resolve_as_the_model_says(chain in chain()) {
        let name = |i: usize| if i == 0 { "q.example.".to_owned() } else { format!("c{i}.example.") };
        let links = chain.cname_ttls.len();
        let mut records: Vec<_> = chain.cname_ttls.iter().enumerate()
            .map(|(i, &ttl)| cname(&name(i), ttl, &name(i + 1)))
            .collect();
        records.extend(chain.address_ttls.iter().map(|&(last, ttl)| a(&name(links), ttl, [192, 0, 2, last])));
        let shuffled: Vec<_> = chain.order.iter().map(|&i| records[i].clone()).collect();
        let answers = parse(&bytes(&response("q.example.", shuffled)));
        let answers = answers.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let expected_names: Vec<String> =
            (0..=links).map(|i| name(i).trim_end_matches('.').to_owned()).collect();
        prop_assert_eq!(&answers.names, &expected_names);
        let chain_ttl = chain.cname_ttls.iter().map(|&t| rfc2181(t)).min().unwrap_or(u32::MAX);
        let mut got: Vec<_> = answers.addresses.iter().map(|a| (a.addr, a.ttl, a.hops)).collect();
        got.sort();
        let expected: Vec<_> = chain.address_ttls.iter()
            .map(|&(last, ttl)| (IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), chain_ttl.min(rfc2181(ttl)), links))
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn the_cache_keeps_its_books(ops in proptest::collection::vec(op(), 1..80), max in 1usize..8) {
        let t0 = Instant::now();
        let grace = Duration::from_secs(3);
        let mut now = t0;
        let mut cache = DnsNames::new(max, grace);
        for op in ops {
            match op {
                Op::Record { netns, question, ip, ttl } => {
                    let owner = format!("n{question}.example.");
                    let message = bytes(&response(&owner, vec![a(&owner, ttl, [10, 0, 0, ip])]));
                    let answers = cache.ingest(netns, &message, now);
                    prop_assert!(answers.is_ok());
                    // Just recorded, so it is the name, unless the grace and TTL are both 0.
                    let named = cache.name_for(netns, IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)), now);
                    prop_assert_eq!(named, Some(&owner[..owner.len() - 1]));
                }
                Op::Advance(s) => now += Duration::from_secs(s),
                Op::Expire => {
                    cache.expire(now);
                }
                Op::Forget(netns) => {
                    cache.forget(netns);
                    for ip in 0..6 {
                        prop_assert_eq!(cache.name_for(netns, IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)), now), None);
                    }
                }
            }
            cache.assert_consistent();
        }
        cache.expire(now + Duration::from_secs(60));
        prop_assert_eq!(cache.entries(), 0);
    }
}
