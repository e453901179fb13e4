//! Tests of the DNS module. Messages are built with hickory-proto's own encoder (which
//! compresses names, so pointers are exercised too), or assembled by hand where the encoder
//! refuses to write the broken form under test.

mod cache;
mod parse;
mod properties;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};

pub(super) fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap_or_else(|e| panic!("test name {text:?}: {e}"))
}

pub(super) fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A::from(Ipv4Addr::from(ip))))
}

pub(super) fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    let ip: Ipv6Addr = ip
        .parse()
        .unwrap_or_else(|e| panic!("test address {ip}: {e}"));
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA::from(ip)))
}

pub(super) fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

pub(super) fn v4(ip: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(ip))
}

/// A NOERROR response to an A query for `question` with `answers`.
pub(super) fn response(question: &str, answers: Vec<Record>) -> Message {
    response_for(name(question), answers)
}

/// A NOERROR response to an A query for `question` with `answers`.
pub(super) fn response_for(question: Name, answers: Vec<Record>) -> Message {
    let mut message = Message::new();
    message
        .set_id(0x1234)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_query(Query::query(question, RecordType::A))
        .add_answers(answers);
    message
}

pub(super) fn bytes(message: &Message) -> Vec<u8> {
    message
        .to_vec()
        .unwrap_or_else(|e| panic!("encoding the test message: {e}"))
}

/// api.example.com → api.example.com.edge.net → e1.cdn.net → one A and one AAAA, plus an
/// address nothing on the chain owns.
pub(super) fn chain_response() -> Vec<u8> {
    bytes(&response(
        "api.example.com.",
        vec![
            cname("api.example.com.", 300, "api.example.com.edge.net."),
            cname("api.example.com.edge.net.", 60, "e1.cdn.net."),
            a("e1.cdn.net.", 20, [192, 0, 2, 1]),
            aaaa("e1.cdn.net.", 600, "2001:db8::1"),
            a("unrelated.example.", 600, [198, 51, 100, 9]),
        ],
    ))
}
