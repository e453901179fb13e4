//! A bounded TCP connection storm for `cargo xtask bench`, run inside a lab network namespace
//! with `ip netns exec NS storm ...`. Every loop stops at its count or its time limit, whichever
//! comes first, and prints one JSON line of results on stdout.
//!
//!   storm serve ADDR:PORT[,ADDR:PORT...] [THREADS]
//!       accept connections (on THREADS runtime threads, default 2), read each until the client
//!       closes, then close; prints {"listening":N} once bound; exits after 30 minutes
//!   storm connect ADDR:PORT[,...] COUNT SECONDS THREADS fin|rst
//!       COUNT connections round-robin over the addresses, split over THREADS threads; each is
//!       closed right after connect, with a FIN or (SO_LINGER 0) a reset
//!   storm refuse ADDR[,ADDR...] PORT_FROM COUNT SECONDS
//!       COUNT connects to distinct (address, port) pairs, ports counting up from PORT_FROM on
//!       each address in turn (expected to be refused: nothing listens there)
//!   storm hold ADDR:PORT COUNT SECONDS
//!       open COUNT connections, print {"holding":N}, close them all (FIN) when a line (or EOF)
//!       arrives on stdin or after SECONDS, print {"closed":N}

use std::{
    io::BufRead,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;

fn addrs(list: &str) -> Vec<SocketAddr> {
    list.split(',')
        .map(|a| a.parse().expect("ADDR:PORT"))
        .collect()
}

fn listen(addr: SocketAddr) -> std::net::TcpListener {
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.listen(4096).expect("listen");
    s.into()
}

fn serve(list: &str, threads: usize) {
    let listeners: Vec<_> = addrs(list).into_iter().map(listen).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        for l in listeners {
            l.set_nonblocking(true).expect("nonblocking");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else {
                        // Out of file descriptors, say: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Read until the client closes (FIN or reset), then close: connections held
                    // open by `storm hold` stay open as long as their client keeps them.
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                }
            });
        }
        println!("{{\"listening\":{}}}", list.split(',').count());
        // Bounded: a forgotten server does not outlive a benchmark run by much.
        tokio::time::sleep(Duration::from_secs(1800)).await;
    });
}

fn connect(list: &str, count: u64, seconds: f64, threads: u64, rst: bool) {
    let targets = Arc::new(addrs(list));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (targets, ok, failed) = (targets.clone(), ok.clone(), failed.clone());
            let share = count / threads + u64::from(t < count % threads);
            std::thread::spawn(move || {
                for i in 0..share {
                    if i.is_multiple_of(64) && Instant::now() >= deadline {
                        break;
                    }
                    let to = targets[((i + t) % targets.len() as u64) as usize];
                    match TcpStream::connect(to) {
                        Ok(s) => {
                            if rst {
                                let _ = Socket::from(s).set_linger(Some(Duration::ZERO));
                            }
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "{{\"connections\":{n},\"failed\":{},\"seconds\":{secs:.6},\"per_second\":{:.1}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / secs
    );
}

fn refuse(list: &str, from: u16, count: u64, seconds: f64) {
    let ips: Vec<IpAddr> = list.split(',').map(|a| a.parse().expect("ADDR")).collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let (mut refused, mut other) = (0u64, 0u64);
    let mut port = from;
    let mut i = 0u64;
    while i < count {
        if i.is_multiple_of(256) && Instant::now() >= deadline {
            break;
        }
        let ip = ips[(i % ips.len() as u64) as usize];
        match TcpStream::connect(SocketAddr::new(ip, port)) {
            Err(e) if e.raw_os_error() == Some(111) => refused += 1,
            _ => other += 1,
        }
        i += 1;
        if i.is_multiple_of(ips.len() as u64) {
            port = port.checked_add(1).expect("port range exhausted");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"refused\":{refused},\"other\":{other},\"seconds\":{secs:.6},\"per_second\":{:.1}}}",
        (refused + other) as f64 / secs
    );
}

fn hold(addr: &str, count: u64, seconds: f64) {
    let to: SocketAddr = addr.parse().expect("ADDR:PORT");
    let held: Vec<TcpStream> = (0..count)
        .filter_map(|_| TcpStream::connect(to).ok())
        .collect();
    println!("{{\"holding\":{}}}", held.len());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs_f64(seconds));
    let n = held.len();
    drop(held);
    println!("{{\"closed\":{n}}}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    let secs = |i: usize| -> f64 { arg(i).parse().expect("SECONDS") };
    match arg(0).as_str() {
        "serve" => serve(&arg(1), arg(2).parse().unwrap_or(2)),
        "connect" => connect(&arg(1), num(2), secs(3), num(4).max(1), arg(5) == "rst"),
        "refuse" => refuse(&arg(1), num(2) as u16, num(3), secs(4)),
        "hold" => hold(&arg(1), num(2), secs(3)),
        other => {
            eprintln!("storm: unknown command {other:?}; see tests/src/bin/storm.rs");
            std::process::exit(2);
        }
    }
}
