//! A TCP peer for the end-to-end tests, run inside a test network namespace with
//! `ip netns exec NS netpeer ...` so that its connections carry that namespace.
//!
//!   netpeer serve ADDR:PORT [IDLE_S]   accept connections until killed, one at a time, each
//!                                      closed when its client closes or sends nothing for
//!                                      IDLE_S seconds (default 2)
//!   netpeer connect ADDR:PORT N [rst]  make N connections one after another; print outcomes
//!   netpeer abort ADDR:PORT MS         start a connect, close the socket after MS milliseconds
//!   netpeer hold ADDR:PORT             connect and keep the connection open until killed
//!   netpeer storm ADDR PORT_FROM PORT_TO   one connect to each port in the range
//!   netpeer resolve NAME PORT N        resolve NAME with the system resolver (getaddrinfo, as
//!                                      an application does: /etc/resolv.conf, which
//!                                      `ip netns exec` takes from /etc/netns/NS/), then make N
//!                                      connections to its first IPv4 address (else IPv6); N may be 0
//!   netpeer lookups NAME K             resolve NAME K times, one after another
//!
//! It prints one JSON line of results on stdout, so tests can cross-check what the agent saw.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn outcome_of(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(111) => "refused".into(),
        Some(110) => "timed-out".into(),
        Some(113 | 101) => "unreachable".into(),
        _ => format!("error:{e}"),
    }
}

fn connect_once(addr: SocketAddr, rst: bool) -> String {
    match TcpStream::connect(addr) {
        Ok(s) => {
            if rst {
                // SO_LINGER 0: close sends a reset instead of a FIN.
                let sock = Socket::from(s);
                let _ = sock.set_linger(Some(Duration::ZERO));
            }
            "established".into()
        }
        Err(e) => outcome_of(&e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let addr = || -> SocketAddr { arg(1).parse().expect("ADDR:PORT") };
    match arg(0).as_str() {
        "serve" => {
            let l = TcpListener::bind(addr()).expect("bind");
            let idle = Duration::from_secs(args.get(2).map_or(2, |s| s.parse().expect("IDLE_S")));
            println!("{{\"listening\":\"{}\"}}", l.local_addr().expect("addr"));
            for s in l.incoming().flatten() {
                // Read until the client closes, then close: a FIN close on both sides.
                let mut s = s;
                let _ = s.set_read_timeout(Some(idle));
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        }
        "connect" => {
            let n: u64 = arg(2).parse().expect("N");
            let rst = arg(3) == "rst";
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..n {
                *outcomes.entry(connect_once(addr(), rst)).or_default() += 1;
            }
            println!("{}", serde_json::to_string(&outcomes).expect("json"));
        }
        "abort" => {
            let a = addr();
            let ms: u64 = arg(2).parse().expect("MS");
            let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP))
                .expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            match s.connect(&SockAddr::from(a)) {
                Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {}
                other => panic!("expected a connect in progress, got {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(ms));
            drop(s);
            println!("{{\"aborted\":1}}");
        }
        "hold" => {
            let _s = TcpStream::connect(addr()).expect("connect");
            println!("{{\"holding\":1}}");
            std::thread::sleep(Duration::from_secs(600));
        }
        "storm" => {
            let ip: std::net::IpAddr = arg(1).parse().expect("ADDR");
            let from: u16 = arg(2).parse().expect("PORT_FROM");
            let to: u16 = arg(3).parse().expect("PORT_TO");
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            for port in from..=to {
                *outcomes
                    .entry(connect_once(SocketAddr::new(ip, port), false))
                    .or_default() += 1;
            }
            println!("{}", serde_json::to_string(&outcomes).expect("json"));
        }
        "lookups" => {
            let name = arg(1);
            let k: u64 = arg(2).parse().expect("K");
            let resolved = (0..k)
                .filter(|_| std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 443)).is_ok())
                .count();
            println!("{{\"resolved\":{resolved}}}");
        }
        "resolve" => {
            let name = arg(1);
            let port: u16 = arg(2).parse().expect("PORT");
            let n: u64 = arg(3).parse().expect("N");
            let addrs: Vec<SocketAddr> =
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))
                    .map(Iterator::collect)
                    .unwrap_or_default();
            let mut outcomes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            // The first IPv4 address, else the first IPv6 one.
            let first = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied();
            outcomes.insert(
                "address".into(),
                first.map_or(serde_json::Value::Null, |a| a.ip().to_string().into()),
            );
            if let Some(a) = first {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..n {
                    *counts.entry(connect_once(a, false)).or_default() += 1;
                }
                outcomes.insert(
                    "outcomes".into(),
                    serde_json::to_value(counts).expect("json"),
                );
            }
            println!("{}", serde_json::to_string(&outcomes).expect("json"));
        }
        other => {
            eprintln!(
                "netpeer: unknown command {other:?}; see the doc comment in tests/src/bin/netpeer.rs"
            );
            std::process::exit(2);
        }
    }
}
