//! Both ends of `net-bench`'s traffic, std only (so `net-bench` builds it static with
//! plain `rustc` in seconds and puts it in the lab machine and in the guest):
//!
//! - `serve SINK_PORT ECHO_PORT` (lab machine, 127.0.0.1): the sink reads each connection
//!   to its end and answers with the byte count; the echo port echoes every 64-byte
//!   message.
//! - `upload ADDR:PORT MIB MAX_S` (guest): sends MIB MiB (or what fits in MAX_S seconds)
//!   and waits for the sink's count: `NETBENCH-UPLOAD bytes=N secs=S`.
//! - `rr ADDR:PORT COUNT MAX_S` (guest): COUNT 64-byte request/response round trips on one
//!   connection (TCP_NODELAY): `NETBENCH-RR count=N median_us=M p99_us=P`.
//!
//! Every socket operation has a timeout; nothing here waits without bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The sink waits longer than the sender's own bound, so the sender's error is the one
/// that shows.
const SINK_TIMEOUT: Duration = Duration::from_secs(120);
const MSG: usize = 64;

fn serve(sink: u16, echo: u16) -> Result<(), String> {
    let bind = |p: u16| {
        TcpListener::bind(("127.0.0.1", p)).map_err(|e| format!("binding 127.0.0.1:{p}: {e}"))
    };
    let (sink, echo) = (bind(sink)?, bind(echo)?);
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || echo_one(s));
        }
    });
    for s in sink.incoming().flatten() {
        std::thread::spawn(move || sink_one(s));
    }
    Ok(())
}

fn sink_one(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(SINK_TIMEOUT));
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let t0 = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                // On the lab console: tells a stalled sender from a reset.
                println!(
                    "NETSINK error after {total} bytes, {:.1} s: {e}",
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
        }
    }
    let _ = s.write_all(format!("{total}\n").as_bytes());
}

fn echo_one(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let mut m = [0u8; MSG];
    while s.read_exact(&mut m).is_ok() {
        if s.write_all(&m).is_err() {
            return;
        }
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let a: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let s = TcpStream::connect_timeout(&a, IO_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn upload(addr: &str, mib: u64, max_s: u64) -> Result<(), String> {
    let mut s = connect(addr)?;
    let chunk = vec![0x5au8; 64 * 1024];
    let want = mib << 20;
    let limit = Duration::from_secs(max_s);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < want && t0.elapsed() < limit {
        s.write_all(&chunk).map_err(|e| {
            format!(
                "sending after {sent} bytes, {:.1} s: {e}",
                t0.elapsed().as_secs_f64()
            )
        })?;
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("reading the sink's count: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let got: u64 = line
        .trim()
        .parse()
        .map_err(|_| format!("sink said {line:?}"))?;
    if got != sent {
        return Err(format!("sent {sent} bytes, the sink got {got}"));
    }
    println!("NETBENCH-UPLOAD bytes={sent} secs={secs:.3}");
    Ok(())
}

fn rr(addr: &str, count: usize, max_s: u64) -> Result<(), String> {
    let mut s = connect(addr)?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(max_s);
    let t0 = Instant::now();
    let mut m = [0x33u8; MSG];
    let mut times = Vec::with_capacity(count);
    while times.len() < count && t0.elapsed() < limit {
        let t = Instant::now();
        s.write_all(&m).map_err(|e| format!("request: {e}"))?;
        s.read_exact(&mut m).map_err(|e| format!("response: {e}"))?;
        times.push(t.elapsed().as_micros() as u64);
    }
    if times.is_empty() {
        return Err("no round trip completed".into());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "NETBENCH-RR count={} median_us={} p99_us={}",
        times.len(),
        at(0.5),
        at(0.99)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<u64, String> {
        args.get(i)
            .ok_or_else(|| format!("argument {i} missing"))?
            .parse()
            .map_err(|_| format!("argument {i} is not a number"))
    };
    let r = match args.first().map(String::as_str) {
        Some("serve") => num(1).and_then(|a| num(2).and_then(|b| serve(a as u16, b as u16))),
        Some("upload") => num(2).and_then(|m| num(3).and_then(|t| upload(&args[1], m, t))),
        Some("rr") => num(2).and_then(|c| num(3).and_then(|t| rr(&args[1], c as usize, t))),
        _ => Err("usage: net-bench-peer serve SINK ECHO | upload ADDR:PORT MIB MAX_S | rr ADDR:PORT COUNT MAX_S".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("NETBENCH-ERROR {e}");
            ExitCode::FAILURE
        }
    }
}
