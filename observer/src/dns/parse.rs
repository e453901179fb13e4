//! Decoding of one DNS response into the name a pod asked for and the addresses it was given.

use std::{collections::HashSet, net::IpAddr};

use hickory_proto::{
    ProtoError, ProtoErrorKind,
    op::{Header, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record},
    serialize::binary::{BinDecodable, BinDecoder, DecodeError},
};

/// The largest message accepted: a DNS message over TCP is framed by a 16-bit length, and EDNS
/// over UDP cannot exceed it either, so anything longer did not come from a DNS peer.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// The most CNAME records followed from the question. Real chains reach 9 (Microsoft's
/// sign-in CDN) and Unbound gives up after 11 restarts by default, so a longer chain is
/// broken or hostile; the bound also caps the work one message can cause.
pub const MAX_CNAME_HOPS: usize = 16;

/// What one NOERROR response told a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answers {
    /// The question name first, then each CNAME target in the order the chain was followed.
    /// Lowercase, without the trailing dot (the root is `.`); labels with bytes outside
    /// letters, digits, `-` and `_` are escaped the way zone files write them (`\.`, `\000`),
    /// so a label holding a dot never reads as two labels.
    pub names: Vec<String>,
    /// Every A and AAAA address owned by a name of the chain, each once, in answer order.
    pub addresses: Vec<Address>,
}

/// One address of an [`Answers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// The address, as the record carried it.
    pub addr: IpAddr,
    /// Seconds the answer may be used: the least TTL of the CNAME records leading to the
    /// address and of its own record (a chain is only as fresh as its stalest link). A TTL
    /// with the top bit set counts as 0 (RFC 2181 §8).
    pub ttl: u32,
    /// How many CNAMEs lead from the question to the address's owner: the names that name
    /// it are `names[..=hops]`.
    pub hops: usize,
}

impl Answers {
    /// The name the pod asked for.
    pub fn question(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// The names that lead to `address`: the question first, then the CNAME targets up to
    /// the record's owner.
    pub fn names_of(&self, address: &Address) -> &[String] {
        let end = address.hops.saturating_add(1).min(self.names.len());
        self.names.get(..end).unwrap_or(&[])
    }
}

/// Why a message yielded no answers. Each kind is counted apart by [`super::DnsCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("DNS message longer than {MAX_MESSAGE_LEN} bytes")]
    Oversized,
    /// The bytes end inside the header, the question or an answer record: a capture cut short
    /// or a TCP message split over segments. This is not the TC flag: a response with TC set
    /// is complete as sent and its answers are used.
    #[error("DNS message truncated")]
    Truncated,
    /// A compression pointer at or after the name it belongs to. Only such pointers can form a
    /// loop; the decoder rejects all of them, so a loop never runs.
    #[error("DNS name compression pointer loop")]
    PointerLoop,
    /// Anything else the decoder rejects, or a response without exactly one question
    /// (RFC 9619: a standard query carries one).
    #[error("malformed DNS message")]
    Malformed,
    /// A query, or a response to an opcode other than QUERY (NOTIFY, UPDATE, ...).
    #[error("not a response to a standard query")]
    NotAResponse,
    /// RCODE NXDOMAIN: the name does not exist.
    #[error("DNS response NXDOMAIN")]
    NxDomain,
    /// RCODE SERVFAIL: the resolver failed.
    #[error("DNS response SERVFAIL")]
    ServFail,
    /// RCODE REFUSED.
    #[error("DNS response REFUSED")]
    Refused,
    /// Any other RCODE but NOERROR.
    #[error("DNS response with an error RCODE")]
    OtherRcode,
}

impl ParseError {
    /// Every kind, for exporting one counter per kind.
    pub const ALL: [ParseError; 9] = [
        ParseError::Oversized,
        ParseError::Truncated,
        ParseError::PointerLoop,
        ParseError::Malformed,
        ParseError::NotAResponse,
        ParseError::NxDomain,
        ParseError::ServFail,
        ParseError::Refused,
        ParseError::OtherRcode,
    ];

    /// A stable snake_case name, fit for a metric label.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::Oversized => "oversized",
            ParseError::Truncated => "truncated",
            ParseError::PointerLoop => "pointer_loop",
            ParseError::Malformed => "malformed",
            ParseError::NotAResponse => "not_response",
            ParseError::NxDomain => "nxdomain",
            ParseError::ServFail => "servfail",
            ParseError::Refused => "refused",
            ParseError::OtherRcode => "other_rcode",
        }
    }

    /// The position of this kind in [`ParseError::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            ParseError::Oversized => 0,
            ParseError::Truncated => 1,
            ParseError::PointerLoop => 2,
            ParseError::Malformed => 3,
            ParseError::NotAResponse => 4,
            ParseError::NxDomain => 5,
            ParseError::ServFail => 6,
            ParseError::Refused => 7,
            ParseError::OtherRcode => 8,
        }
    }
}

/// Decodes one DNS message (without the TCP length prefix) and follows the answer section's
/// CNAME chain from the question to its A and AAAA records.
///
/// Only the header, the question and the answer section are decoded: the authority and
/// additional sections name nothing a pod connects to, and a capture that stops inside them
/// (the kernel hands over a bounded prefix) still yields every answer. Records of a class
/// other than IN are skipped; so are A and AAAA records no chain link owns (a resolver may add
/// them, but the pod did not ask for them).
pub fn parse(message: &[u8]) -> Result<Answers, ParseError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::Oversized);
    }
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).map_err(|e| classify(&e))?;
    if header.message_type() != MessageType::Response || header.op_code() != OpCode::Query {
        return Err(ParseError::NotAResponse);
    }
    match header.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Err(ParseError::NxDomain),
        ResponseCode::ServFail => return Err(ParseError::ServFail),
        ResponseCode::Refused => return Err(ParseError::Refused),
        _ => return Err(ParseError::OtherRcode),
    }
    if header.query_count() != 1 {
        return Err(ParseError::Malformed);
    }
    let query = Query::read(&mut decoder).map_err(|e| classify(&e))?;
    // Each record takes at least 11 bytes, so the count is bounded by the message length;
    // reading them one by one stops at the first bad one.
    let mut records = Vec::new();
    for _ in 0..header.answer_count() {
        let record = Record::read(&mut decoder).map_err(|e| classify(&e))?;
        if record.dns_class() != DNSClass::IN {
            continue;
        }
        let data = match record.data() {
            RData::A(a) => Data::Addr(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Data::Addr(IpAddr::V6(aaaa.0)),
            RData::CNAME(cname) => Data::Cname(text(&cname.0)),
            _ => continue,
        };
        records.push(Answer {
            owner: text(record.name()),
            ttl: effective_ttl(record.ttl()),
            data,
        });
    }
    Ok(follow(text(query.name()), &records))
}

/// An answer record reduced to what the chain needs.
struct Answer {
    owner: String,
    ttl: u32,
    data: Data,
}

enum Data {
    Addr(IpAddr),
    Cname(String),
}

/// Walks from the question through at most [`MAX_CNAME_HOPS`] CNAMEs, collecting the
/// addresses each link owns. A CNAME back to a name already on the chain ends the walk, so a
/// loop is followed once around and no further. An owner with several CNAMEs (not allowed,
/// RFC 2181 §10.1) is followed through the first.
fn follow(question: String, records: &[Answer]) -> Answers {
    let mut answers = Answers {
        names: vec![question],
        addresses: Vec::new(),
    };
    // A set, not a scan of `addresses`: a 64 KiB message can carry 4,000 records.
    let mut seen = HashSet::new();
    // The least TTL of the CNAMEs from the question to the current name.
    let mut chain_ttl = u32::MAX;
    for hops in 0..=MAX_CNAME_HOPS {
        let Some(current) = answers.names.last() else {
            break;
        };
        let mut next = None;
        for record in records.iter().filter(|r| &r.owner == current) {
            match &record.data {
                Data::Addr(addr) => {
                    if seen.insert(*addr) {
                        answers.addresses.push(Address {
                            addr: *addr,
                            ttl: chain_ttl.min(record.ttl),
                            hops,
                        });
                    }
                }
                Data::Cname(target) => {
                    if next.is_none() {
                        next = Some((target, record.ttl));
                    }
                }
            }
        }
        let Some((target, ttl)) = next else {
            break;
        };
        if hops == MAX_CNAME_HOPS || answers.names.contains(target) {
            break;
        }
        chain_ttl = chain_ttl.min(ttl);
        answers.names.push(target.clone());
    }
    answers
}

/// RFC 2181 §8: a TTL with the most significant bit set is treated as zero.
fn effective_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

/// The name as matched against the architecture's hosts: lowercase ASCII (escaped where a
/// label needs it), without the trailing dot.
fn text(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// Sorts a decoder error into a kind. hickory-proto reports running out of bytes only as text
/// (its `ProtoErrorKind::Msg`): either its decoder's end-of-input error, or a record whose
/// RDLENGTH exceeds what is left. The parse tests feed every prefix of valid messages and pin
/// both texts, so a hickory upgrade that rewords them fails there, not silently here.
fn classify(error: &ProtoError) -> ParseError {
    match error.kind() {
        ProtoErrorKind::PointerNotPriorToLabel { .. }
        | ProtoErrorKind::LabelOverlapsWithOther { .. } => ParseError::PointerLoop,
        ProtoErrorKind::Msg(text)
            if *text == DecodeError::InsufficientBytes.to_string()
                || text.starts_with("rdata length too large for remaining bytes") =>
        {
            ParseError::Truncated
        }
        _ => ParseError::Malformed,
    }
}
