//! The per-namespace cache: naming, expiry to the instant, refresh, bounds and isolation.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{a, bytes, chain_response, response, v4};
use crate::dns::{Answers, DnsNames, MAX_CHAIN_BYTES, MAX_NAMES_PER_ADDRESS, ParseError, parse};

const NS: u32 = 4026531993;
const GRACE: Duration = Duration::from_secs(60);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Answers for `question` with one A record.
fn answer(question: &str, ttl: u32, ip: [u8; 4]) -> Answers {
    let owner = format!("{question}.");
    parse(&bytes(&response(&owner, vec![a(&owner, ttl, ip)])))
        .unwrap_or_else(|e| panic!("test answer: {e:?}"))
}

fn names(cache: &DnsNames, netns: u32, addr: IpAddr, now: Instant) -> Vec<String> {
    cache
        .names_for(netns, addr, now)
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_address_is_named_by_the_question_and_matched_through_its_chain() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    let answers = cache.ingest(NS, &chain_response(), t0).unwrap();
    assert_eq!(answers.addresses.len(), 2);
    assert_eq!(cache.entries(), 2);
    assert_eq!(
        cache.name_for(NS, v4([192, 0, 2, 1]), t0),
        Some("api.example.com")
    );
    assert_eq!(
        cache.name_for(NS, "2001:db8::1".parse().unwrap(), t0),
        Some("api.example.com")
    );
    assert_eq!(
        names(&cache, NS, v4([192, 0, 2, 1]), t0),
        ["api.example.com", "api.example.com.edge.net", "e1.cdn.net"]
    );
    // Off the chain, so never recorded.
    assert_eq!(cache.name_for(NS, v4([198, 51, 100, 9]), t0), None);
}

#[test]
fn expiry_is_receipt_plus_ttl_plus_grace_exactly() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.record(NS, &answer("x.example", 30, [192, 0, 2, 1]), t0);
    let end = t0 + secs(30) + GRACE;
    let just_before = end - Duration::from_nanos(1);
    assert_eq!(
        cache.name_for(NS, v4([192, 0, 2, 1]), just_before),
        Some("x.example")
    );
    assert_eq!(cache.expire(just_before), 0);
    assert_eq!(cache.name_for(NS, v4([192, 0, 2, 1]), end), None);
    assert_eq!(
        names(&cache, NS, v4([192, 0, 2, 1]), end),
        Vec::<String>::new()
    );
    // Not swept until asked: still an entry, but never returned.
    assert_eq!(cache.entries(), 1);
    assert_eq!(cache.expire(end), 1);
    assert_eq!(
        (cache.entries(), cache.expired(), cache.evictions()),
        (0, 1, 0)
    );
}

#[test]
fn the_address_ttl_is_the_least_along_the_chain() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.ingest(NS, &chain_response(), t0).unwrap();
    // The A record lives min(300, 60, 20) = 20 s, the AAAA min(300, 60, 600) = 60 s.
    let a_end = t0 + secs(20) + GRACE;
    assert!(
        cache
            .name_for(NS, v4([192, 0, 2, 1]), a_end - Duration::from_nanos(1))
            .is_some()
    );
    assert_eq!(cache.name_for(NS, v4([192, 0, 2, 1]), a_end), None);
    assert!(
        cache
            .name_for(NS, "2001:db8::1".parse().unwrap(), a_end)
            .is_some()
    );
    assert_eq!(cache.expire(t0 + secs(60) + GRACE), 2);
}

#[test]
fn a_later_answer_refreshes_the_naming() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.record(NS, &answer("x.example", 30, [192, 0, 2, 1]), t0);
    cache.record(NS, &answer("x.example", 30, [192, 0, 2, 1]), t0 + secs(20));
    assert_eq!(cache.entries(), 1);
    let end = t0 + secs(50) + GRACE;
    assert_eq!(
        cache.name_for(NS, v4([192, 0, 2, 1]), end - Duration::from_nanos(1)),
        Some("x.example")
    );
    assert_eq!(cache.expire(end - Duration::from_nanos(1)), 0);
    assert_eq!(cache.expire(end), 1);

    // A refresh never shortens: a resolver's cached copy counts its TTL down.
    cache.record(NS, &answer("y.example", 300, [192, 0, 2, 2]), t0);
    cache.record(NS, &answer("y.example", 5, [192, 0, 2, 2]), t0 + secs(10));
    let end = t0 + secs(300) + GRACE;
    assert_eq!(
        cache.name_for(NS, v4([192, 0, 2, 2]), end - Duration::from_nanos(1)),
        Some("y.example")
    );
    assert_eq!(cache.name_for(NS, v4([192, 0, 2, 2]), end), None);
}

#[test]
fn several_names_for_one_address_most_recent_first_and_bounded() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(64, GRACE);
    let ip = [203, 0, 113, 10];
    cache.record(NS, &answer("first.example", 300, ip), t0);
    cache.record(NS, &answer("second.example", 300, ip), t0 + secs(1));
    assert_eq!(
        cache.name_for(NS, v4(ip), t0 + secs(1)),
        Some("second.example")
    );
    assert_eq!(
        names(&cache, NS, v4(ip), t0 + secs(1)),
        ["second.example", "first.example"]
    );

    // Asking for the first again makes it the most recent.
    cache.record(NS, &answer("first.example", 300, ip), t0 + secs(2));
    assert_eq!(
        cache.name_for(NS, v4(ip), t0 + secs(2)),
        Some("first.example")
    );
    assert_eq!(cache.entries(), 2);

    for i in 0..MAX_NAMES_PER_ADDRESS {
        cache.record(
            NS,
            &answer(&format!("n{i}.example"), 300, ip),
            t0 + secs(3 + i as u64),
        );
    }
    // second, then first, were the least recent: pushed out, and counted.
    assert_eq!(cache.entries(), MAX_NAMES_PER_ADDRESS);
    assert_eq!(cache.evictions(), 2);
    assert_eq!(
        names(&cache, NS, v4(ip), t0 + secs(10)),
        ["n3.example", "n2.example", "n1.example", "n0.example"]
    );
}

#[test]
fn each_name_expires_on_its_own() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    let ip = [203, 0, 113, 11];
    cache.record(NS, &answer("long.example", 600, ip), t0);
    cache.record(NS, &answer("short.example", 10, ip), t0);
    assert_eq!(cache.name_for(NS, v4(ip), t0), Some("short.example"));
    let later = t0 + secs(10) + GRACE;
    assert_eq!(cache.name_for(NS, v4(ip), later), Some("long.example"));
    assert_eq!(cache.expire(later), 1);
    assert_eq!(cache.name_for(NS, v4(ip), later), Some("long.example"));
}

#[test]
fn at_the_bound_the_naming_closest_to_expiry_is_evicted_and_counted() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(3, GRACE);
    cache.record(NS, &answer("a.example", 300, [192, 0, 2, 1]), t0);
    cache.record(NS, &answer("b.example", 30, [192, 0, 2, 2]), t0);
    cache.record(NS, &answer("c.example", 600, [192, 0, 2, 3]), t0);
    assert_eq!((cache.entries(), cache.evictions()), (3, 0));
    cache.record(NS, &answer("d.example", 60, [192, 0, 2, 4]), t0);
    assert_eq!((cache.entries(), cache.evictions()), (3, 1));
    assert_eq!(cache.name_for(NS, v4([192, 0, 2, 2]), t0), None);
    for (ip, name) in [
        ([192, 0, 2, 1], "a.example"),
        ([192, 0, 2, 3], "c.example"),
        ([192, 0, 2, 4], "d.example"),
    ] {
        assert_eq!(cache.name_for(NS, v4(ip), t0), Some(name));
    }
    // A refresh at the bound takes no room.
    cache.record(NS, &answer("a.example", 300, [192, 0, 2, 1]), t0 + secs(1));
    assert_eq!((cache.entries(), cache.evictions()), (3, 1));
    // Expired namings make room before anything is evicted.
    let late = t0 + secs(300) + GRACE;
    cache.record(NS, &answer("e.example", 60, [192, 0, 2, 5]), late);
    assert_eq!(
        (cache.entries(), cache.evictions(), cache.expired()),
        (3, 1, 1)
    );
}

#[test]
fn a_pod_never_sees_another_pods_answers() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.record(1, &answer("one.example", 300, [192, 0, 2, 1]), t0);
    cache.record(2, &answer("two.example", 300, [192, 0, 2, 1]), t0);
    assert_eq!(
        cache.name_for(1, v4([192, 0, 2, 1]), t0),
        Some("one.example")
    );
    assert_eq!(
        cache.name_for(2, v4([192, 0, 2, 1]), t0),
        Some("two.example")
    );
    assert_eq!(cache.name_for(3, v4([192, 0, 2, 1]), t0), None);
    assert_eq!(names(&cache, 1, v4([192, 0, 2, 1]), t0), ["one.example"]);

    // A namespace gone (its inode may be reused) takes its names along, and only its own.
    assert_eq!(cache.forget(1), 1);
    assert_eq!(cache.name_for(1, v4([192, 0, 2, 1]), t0), None);
    assert_eq!(
        cache.name_for(2, v4([192, 0, 2, 1]), t0),
        Some("two.example")
    );
    assert_eq!(
        (cache.entries(), cache.evictions(), cache.expired()),
        (1, 0, 0)
    );
    assert_eq!(cache.expire(t0 + secs(300) + GRACE), 1);
}

#[test]
fn ipv4_mapped_lookups_find_a_records() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.record(NS, &answer("m.example", 300, [192, 0, 2, 1]), t0);
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(cache.name_for(NS, mapped, t0), Some("m.example"));
}

#[test]
fn zero_ttl_lives_for_the_grace_alone() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    cache.record(NS, &answer("z.example", 0, [192, 0, 2, 1]), t0);
    assert_eq!(
        cache.name_for(NS, v4([192, 0, 2, 1]), t0 + GRACE - Duration::from_nanos(1)),
        Some("z.example")
    );
    assert_eq!(cache.name_for(NS, v4([192, 0, 2, 1]), t0 + GRACE), None);

    let mut no_grace = DnsNames::new(16, Duration::ZERO);
    no_grace.record(NS, &answer("z.example", 0, [192, 0, 2, 1]), t0);
    assert_eq!(no_grace.entries(), 0);
}

#[test]
fn rejected_messages_are_counted_by_kind_and_record_nothing() {
    let t0 = Instant::now();
    let mut cache = DnsNames::default();
    let mut nx = response("gone.example.", vec![]);
    nx.set_response_code(hickory_proto::op::ResponseCode::NXDomain);
    assert_eq!(cache.ingest(NS, &bytes(&nx), t0), Err(ParseError::NxDomain));
    assert_eq!(cache.ingest(NS, &[0; 5], t0), Err(ParseError::Truncated));
    assert!(cache.ingest(NS, &chain_response(), t0).is_ok());
    let counts = cache.counts();
    assert_eq!(counts.responses, 1);
    assert_eq!(counts.rejected(ParseError::NxDomain), 1);
    assert_eq!(counts.rejected(ParseError::Truncated), 1);
    assert_eq!(counts.rejected(ParseError::Malformed), 0);
    assert_eq!(counts.rejected_by_kind().map(|(_, n)| n).sum::<u64>(), 2);
    assert_eq!(cache.entries(), 2);
}

#[test]
fn stored_chains_are_bounded_in_bytes_but_keep_the_question() {
    let t0 = Instant::now();
    let mut cache = DnsNames::new(16, GRACE);
    let long = |i: usize| format!("{}.c{i}.example", "x".repeat(60));
    let mut records = Vec::new();
    for i in 0..12 {
        let target = format!("{}.", long(i + 1));
        let owner = if i == 0 {
            "q.example.".to_owned()
        } else {
            format!("{}.", long(i))
        };
        records.push(super::cname(&owner, 300, &target));
    }
    records.push(a(&format!("{}.", long(12)), 300, [192, 0, 2, 1]));
    cache
        .ingest(NS, &bytes(&response("q.example.", records)), t0)
        .unwrap();
    let kept = names(&cache, NS, v4([192, 0, 2, 1]), t0);
    assert_eq!(kept.first().map(String::as_str), Some("q.example"));
    assert!(kept.len() < 13, "{} names kept", kept.len());
    assert!(kept.iter().map(String::len).sum::<usize>() <= MAX_CHAIN_BYTES);
    assert_eq!(
        kept.len(),
        1 + (MAX_CHAIN_BYTES - "q.example".len()) / long(1).len()
    );
}
