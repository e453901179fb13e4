//! Decoding: answers, chains, bounds and every rejection kind.

use hickory_proto::{
    op::{MessageType, OpCode, ResponseCode},
    rr::{DNSClass, Name},
};

use super::{a, aaaa, bytes, chain_response, cname, response, response_for, v4};
use crate::dns::{Address, Answers, MAX_CNAME_HOPS, MAX_MESSAGE_LEN, ParseError, parse};

fn ok(message: &[u8]) -> Answers {
    parse(message).unwrap_or_else(|e| panic!("expected answers, got {e:?}"))
}

/// A header: id 0x1234, then `flags` and the four section counts.
fn header(flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [0x1234, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v: &u16| v.to_be_bytes())
        .collect()
}

/// QR=1, RD=1, RA=1, RCODE NOERROR.
const RESPONSE: u16 = 0x8180;

#[test]
fn a_records_name_by_the_question() {
    let message = bytes(&response(
        "example.com.",
        vec![
            a("example.com.", 300, [192, 0, 2, 1]),
            a("example.com.", 300, [192, 0, 2, 2]),
        ],
    ));
    assert_eq!(
        ok(&message),
        Answers {
            names: vec!["example.com".into()],
            addresses: vec![
                Address {
                    addr: v4([192, 0, 2, 1]),
                    ttl: 300,
                    hops: 0
                },
                Address {
                    addr: v4([192, 0, 2, 2]),
                    ttl: 300,
                    hops: 0
                },
            ],
        }
    );
}

#[test]
fn aaaa_records() {
    let message = bytes(&response(
        "v6.example.",
        vec![aaaa("v6.example.", 45, "2001:db8::7")],
    ));
    let answers = ok(&message);
    assert_eq!(answers.question(), "v6.example");
    assert_eq!(
        answers.addresses,
        vec![Address {
            addr: "2001:db8::7".parse().unwrap(),
            ttl: 45,
            hops: 0
        }]
    );
}

#[test]
fn cname_chain_names_the_address_by_the_question_with_the_least_ttl() {
    let answers = ok(&chain_response());
    assert_eq!(
        answers.names,
        vec!["api.example.com", "api.example.com.edge.net", "e1.cdn.net"]
    );
    // 20 = the A record's own TTL, under the CNAMEs' 300 and 60; 60 = the second CNAME's,
    // under the AAAA's 600. The unrelated A record is not on the chain.
    assert_eq!(
        answers.addresses,
        vec![
            Address {
                addr: v4([192, 0, 2, 1]),
                ttl: 20,
                hops: 2
            },
            Address {
                addr: "2001:db8::1".parse().unwrap(),
                ttl: 60,
                hops: 2
            },
        ]
    );
    assert_eq!(answers.names_of(&answers.addresses[0]), &answers.names[..]);
}

#[test]
fn chain_records_in_any_order() {
    let message = bytes(&response(
        "q.example.",
        vec![
            a("c2.example.", 90, [192, 0, 2, 3]),
            cname("c1.example.", 80, "c2.example."),
            cname("q.example.", 70, "c1.example."),
        ],
    ));
    let answers = ok(&message);
    assert_eq!(answers.names, vec!["q.example", "c1.example", "c2.example"]);
    assert_eq!(
        answers.addresses,
        vec![Address {
            addr: v4([192, 0, 2, 3]),
            ttl: 70,
            hops: 2
        }]
    );
}

#[test]
fn cname_loop_is_followed_once_around() {
    let message = bytes(&response(
        "a.example.",
        vec![
            cname("a.example.", 100, "b.example."),
            cname("b.example.", 50, "a.example."),
            a("b.example.", 300, [192, 0, 2, 4]),
        ],
    ));
    let answers = ok(&message);
    assert_eq!(answers.names, vec!["a.example", "b.example"]);
    assert_eq!(
        answers.addresses,
        vec![Address {
            addr: v4([192, 0, 2, 4]),
            ttl: 100,
            hops: 1
        }]
    );

    let own = bytes(&response(
        "self.example.",
        vec![cname("self.example.", 5, "self.example.")],
    ));
    let answers = ok(&own);
    assert_eq!(answers.names, vec!["self.example"]);
    assert!(answers.addresses.is_empty());
}

/// A chain of `links` CNAMEs n0 → n1 → … with an A record on every name from n1 on.
fn long_chain(links: usize) -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..links {
        records.push(cname(
            &format!("n{i}.example."),
            300,
            &format!("n{}.example.", i + 1),
        ));
        records.push(a(
            &format!("n{}.example.", i + 1),
            300,
            [10, 0, 0, (i + 1) as u8],
        ));
    }
    bytes(&response("n0.example.", records))
}

#[test]
fn chain_is_followed_for_at_most_the_bound() {
    let answers = ok(&long_chain(MAX_CNAME_HOPS + 4));
    assert_eq!(answers.names.len(), MAX_CNAME_HOPS + 1);
    assert_eq!(
        answers.names.last().map(String::as_str),
        Some("n16.example")
    );
    assert_eq!(answers.addresses.len(), MAX_CNAME_HOPS);
    assert_eq!(
        answers.addresses.last(),
        Some(&Address {
            addr: v4([10, 0, 0, 16]),
            ttl: 300,
            hops: MAX_CNAME_HOPS
        })
    );
}

#[test]
fn first_of_several_cnames_and_first_of_duplicate_addresses() {
    // Both breaches of RFC 2181 (two CNAMEs at one owner, CNAME beside other data): the walk
    // takes the first CNAME, and an address keeps the shortest chain it was seen on.
    let message = bytes(&response(
        "q.example.",
        vec![
            a("q.example.", 10, [192, 0, 2, 1]),
            cname("q.example.", 100, "x.example."),
            cname("q.example.", 100, "y.example."),
            a("x.example.", 300, [192, 0, 2, 1]),
            a("x.example.", 300, [192, 0, 2, 2]),
            a("y.example.", 300, [192, 0, 2, 3]),
        ],
    ));
    let answers = ok(&message);
    assert_eq!(answers.names, vec!["q.example", "x.example"]);
    assert_eq!(
        answers.addresses,
        vec![
            Address {
                addr: v4([192, 0, 2, 1]),
                ttl: 10,
                hops: 0
            },
            Address {
                addr: v4([192, 0, 2, 2]),
                ttl: 100,
                hops: 1
            },
        ]
    );
}

#[test]
fn names_are_lowercase_without_the_trailing_dot_and_escaped() {
    let message = bytes(&response(
        "WWW.Example.COM.",
        vec![a("www.EXAMPLE.com.", 5, [192, 0, 2, 5])],
    ));
    let answers = ok(&message);
    assert_eq!(answers.names, vec!["www.example.com"]);
    assert_eq!(answers.addresses.len(), 1);

    // A label holding a dot must not read as two labels: `a.b` + `evil.com` is not `b.evil.com`.
    let dotted = Name::from_labels(vec![&b"a.b"[..], b"evil", b"com"]).unwrap();
    assert_eq!(
        ok(&bytes(&response_for(dotted, vec![]))).names,
        vec![r"a\.b.evil.com"]
    );
    // A dot that ends the last label stays escaped; only the root's dot is dropped.
    let dot_at_end = Name::from_labels(vec![&b"x"[..], b"exampl."]).unwrap();
    assert_eq!(
        ok(&bytes(&response_for(dot_at_end, vec![]))).names,
        vec![r"x.exampl\."]
    );

    let root = bytes(&response(".", vec![]));
    assert_eq!(ok(&root).names, vec!["."]);
}

#[test]
fn ttl_with_the_top_bit_set_counts_as_zero() {
    let message = bytes(&response(
        "t.example.",
        vec![a("t.example.", 0x8000_0000, [192, 0, 2, 6])],
    ));
    assert_eq!(ok(&message).addresses[0].ttl, 0);
}

#[test]
fn other_classes_are_skipped() {
    let mut chaos = a("c.example.", 5, [192, 0, 2, 7]);
    chaos.set_dns_class(DNSClass::CH);
    let message = bytes(&response(
        "c.example.",
        vec![chaos, a("c.example.", 5, [192, 0, 2, 8])],
    ));
    assert_eq!(
        ok(&message).addresses,
        vec![Address {
            addr: v4([192, 0, 2, 8]),
            ttl: 5,
            hops: 0
        }]
    );
}

#[test]
fn tc_flag_still_yields_the_answers_sent() {
    let mut message = response("tc.example.", vec![a("tc.example.", 5, [192, 0, 2, 9])]);
    message.set_truncated(true);
    assert_eq!(ok(&bytes(&message)).addresses.len(), 1);
}

#[test]
fn nodata_is_a_response_without_addresses() {
    let answers = ok(&bytes(&response("empty.example.", vec![])));
    assert_eq!(answers.names, vec!["empty.example"]);
    assert!(answers.addresses.is_empty());
}

#[test]
fn sections_after_the_answers_are_not_decoded() {
    // Claim one authority record, then garbage: the answers still count.
    let mut message = chain_response();
    message[8..10].copy_from_slice(&1u16.to_be_bytes());
    message.extend_from_slice(&[0xff; 7]);
    assert_eq!(ok(&message).addresses.len(), 2);
}

#[test]
fn error_rcodes_and_queries_are_rejected_by_kind() {
    let rcode = |code| {
        let mut message = response("x.example.", vec![]);
        message.set_response_code(code);
        parse(&bytes(&message))
    };
    assert_eq!(rcode(ResponseCode::NXDomain), Err(ParseError::NxDomain));
    assert_eq!(rcode(ResponseCode::ServFail), Err(ParseError::ServFail));
    assert_eq!(rcode(ResponseCode::Refused), Err(ParseError::Refused));
    assert_eq!(rcode(ResponseCode::FormErr), Err(ParseError::OtherRcode));
    assert_eq!(rcode(ResponseCode::NotImp), Err(ParseError::OtherRcode));

    let mut query = response("x.example.", vec![]);
    query.set_message_type(MessageType::Query);
    assert_eq!(parse(&bytes(&query)), Err(ParseError::NotAResponse));

    let mut notify = response("x.example.", vec![]);
    notify.set_op_code(OpCode::Notify);
    assert_eq!(parse(&bytes(&notify)), Err(ParseError::NotAResponse));
}

#[test]
fn a_response_needs_exactly_one_question() {
    assert_eq!(
        parse(&header(RESPONSE, 0, 0, 0, 0)),
        Err(ParseError::Malformed)
    );
    let mut two = response("one.example.", vec![]);
    two.add_query(hickory_proto::op::Query::query(
        super::name("two.example."),
        hickory_proto::rr::RecordType::A,
    ));
    assert_eq!(parse(&bytes(&two)), Err(ParseError::Malformed));
}

#[test]
fn every_strict_prefix_is_truncated() {
    let message = chain_response();
    for len in 0..message.len() {
        assert_eq!(
            parse(&message[..len]),
            Err(ParseError::Truncated),
            "prefix of {len} bytes"
        );
    }
    assert!(parse(&message).is_ok());
}

#[test]
fn more_answers_claimed_than_sent_is_truncated() {
    let mut message = chain_response();
    message[6..8].copy_from_slice(&6u16.to_be_bytes());
    assert_eq!(parse(&message), Err(ParseError::Truncated));
}

#[test]
fn compression_pointer_loops_are_rejected() {
    // The question's name is a pointer to itself.
    let mut message = header(RESPONSE, 1, 0, 0, 0);
    message.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(parse(&message), Err(ParseError::PointerLoop));

    // A sound question, then an answer owner `b` followed by a pointer back to its own start:
    // read naively, b.b.b.b… for ever.
    let mut message = header(RESPONSE, 1, 1, 0, 0);
    message.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
    let owner = message.len() as u8;
    message.extend_from_slice(&[
        1, b'b', 0xc0, owner, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1,
    ]);
    assert_eq!(parse(&message), Err(ParseError::PointerLoop));

    // Two names pointing at each other: the question at 12 points on to the answer's owner,
    // which points back at the question.
    let mut message = header(RESPONSE, 1, 1, 0, 0);
    message.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1]);
    message.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    assert_eq!(parse(&message), Err(ParseError::PointerLoop));
}

#[test]
fn garbage_is_malformed() {
    // A label length byte with the reserved 0b10 prefix.
    let mut message = header(RESPONSE, 1, 0, 0, 0);
    message.extend_from_slice(&[0x80, b'a', 0, 0, 1, 0, 1]);
    assert_eq!(parse(&message), Err(ParseError::Malformed));

    // An A record whose RDLENGTH says 3, followed by more bytes.
    let mut message = header(RESPONSE, 1, 1, 0, 0);
    message.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
    message.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 3, 192, 0, 2, 1, 0, 0]);
    assert_eq!(parse(&message), Err(ParseError::Malformed));
}

#[test]
fn size_limit_is_inclusive() {
    let mut message = chain_response();
    // Padding lands after the answers, which are all that is decoded.
    message.resize(MAX_MESSAGE_LEN, 0);
    assert_eq!(ok(&message).addresses.len(), 2);
    message.push(0);
    assert_eq!(parse(&message), Err(ParseError::Oversized));
}

#[test]
fn every_kind_has_a_distinct_label_and_slot() {
    let labels: std::collections::HashSet<_> = ParseError::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(labels.len(), ParseError::ALL.len());
    for (i, kind) in ParseError::ALL.into_iter().enumerate() {
        assert_eq!(kind.index(), i, "{kind:?}");
    }
}
