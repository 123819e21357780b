//! The in-guest commands `bulkhead-copy`, `bulkhead-move` and `bulkhead-open`, and the
//! serving agent's local socket they talk to (`/run/bulkhead-agent/socket`, in a 0700
//! directory of the session user: nobody else can connect).
//!
//! A request is a verb (`copy`, `move`, `open`) and its arguments (absolute paths; or the
//! URL and an optional target), NUL-separated, ended by the client shutting down its
//! write side; at most [`MAX_REQUEST`] bytes within [`REQUEST_TIME`]. The agent answers
//! with lines: `wait TEXT` while the host decides, then one `ok TEXT` or `error TEXT`,
//! and closes. A misbehaving client is dropped; it never stalls the agent.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The socket's path (its directory is the session user's, 0700).
pub const SOCKET: &str = "/run/bulkhead-agent/socket";
/// Bytes of one request.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Time a client has to send its request.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Clients connected at once.
pub const MAX_CLIENTS: usize = 16;

/// What a command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Files { paths: Vec<PathBuf>, is_move: bool },
    Open { url: String, target: Option<String> },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        match self {
            Request::Files { paths, is_move } => {
                parts.push(if *is_move {
                    b"move".to_vec()
                } else {
                    b"copy".to_vec()
                });
                parts.extend(
                    paths
                        .iter()
                        .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
                );
            }
            Request::Open { url, target } => {
                parts.push(b"open".to_vec());
                parts.push(url.as_bytes().to_vec());
                parts.extend(target.iter().map(|t| t.as_bytes().to_vec()));
            }
        }
        parts.join(&0u8)
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, String> {
        let mut parts = bytes.split(|b| *b == 0);
        let verb = parts.next().unwrap_or_default();
        let rest: Vec<&[u8]> = parts.collect();
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| "an argument is not UTF-8".to_string())
        };
        match verb {
            b"copy" | b"move" => {
                let paths = rest
                    .iter()
                    .map(|p| {
                        let p = PathBuf::from(std::ffi::OsStr::from_encoded_bytes_checked(p)?);
                        p.is_absolute()
                            .then_some(p)
                            .ok_or_else(|| "paths must be absolute".to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Request::Files {
                    paths,
                    is_move: verb == b"move",
                })
            }
            b"open" => match rest.as_slice() {
                [url] => Ok(Request::Open {
                    url: text(url)?,
                    target: None,
                }),
                [url, target] => Ok(Request::Open {
                    url: text(url)?,
                    target: Some(text(target)?),
                }),
                _ => Err("open takes a URL and at most one partition".into()),
            },
            _ => Err("unknown request".into()),
        }
    }
}

/// `OsStr::from_encoded_bytes_unchecked` needs bytes from the same platform: on Unix any
/// bytes are a valid `OsStr`, which this spells out without `unsafe`.
trait FromBytes {
    fn from_encoded_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr, String>;
}

impl FromBytes for std::ffi::OsStr {
    fn from_encoded_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr, String> {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(b))
    }
}

/// What a client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Offer(u32),
    Open(u32),
}

struct Client {
    id: u64,
    stream: UnixStream,
    /// Its whole request arrived (it waits for an answer now).
    asked: bool,
    buf: Vec<u8>,
    since: Instant,
    waiting: Option<Waiting>,
}

/// The serving agent's end.
pub struct Server {
    listener: UnixListener,
    clients: Vec<Client>,
    next_id: u64,
}

/// Makes `dir` (the socket's directory) a 0700 directory of `owner` (call while still
/// root; `None`: ours). An existing one is reused if it is a real directory, never
/// followed if it is a symlink.
pub fn prepare_dir(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::other(
                "exists and is not a directory (a symlink?)",
            ));
        }
        Err(_) => std::fs::DirBuilder::new().mode(0o700).create(dir)?,
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

impl Server {
    pub fn bind(path: &Path) -> io::Result<Server> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            clients: Vec::new(),
            next_id: 1,
        })
    }

    /// The fds to poll for reading.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_raw_fd()];
        // A client that asked has shut its write side: always readable (EOF), so it is
        // not polled; its hang-up is checked on each `poll` instead.
        fds.extend(
            self.clients
                .iter()
                .filter(|c| !c.asked)
                .map(|c| c.stream.as_raw_fd()),
        );
        fds
    }

    /// Accepts and reads what is there; returns each complete request with its
    /// client's id (for [`Server::wait`] / [`Server::finish`]). Drops clients that send
    /// too much, too slowly, or hang up while waiting (telling them why when they can
    /// still listen).
    pub fn poll(&mut self) -> Vec<(u64, Result<Request, String>)> {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                let mut s = stream;
                let _ = s.write_all(b"error too many requests at once\n");
                continue;
            }
            self.clients.push(Client {
                id: self.next_id,
                stream,
                asked: false,
                buf: Vec::new(),
                since: Instant::now(),
                waiting: None,
            });
            self.next_id += 1;
        }
        let mut done = Vec::new();
        self.clients.retain_mut(|c| match read_client(c) {
            Step::Keep => true,
            Step::Asked(r) => {
                c.asked = true;
                done.push((c.id, r));
                true
            }
            Step::Drop(why) => {
                if let Some(why) = why {
                    let _ = c.stream.write_all(format!("error {why}\n").as_bytes());
                }
                false
            }
        });
        done
    }

    /// Client `id` now waits for `what`; it is told `text` meanwhile.
    pub fn wait(&mut self, id: u64, what: Waiting, text: &str) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.waiting = Some(what);
            let _ = c
                .stream
                .write_all(format!("wait {}\n", one_line(text)).as_bytes());
        }
    }

    /// Ends client `id` with its last line (`ok …` or `error …`).
    pub fn finish(&mut self, id: u64, line: &str) {
        if let Some(i) = self.clients.iter().position(|c| c.id == id) {
            let mut c = self.clients.remove(i);
            let _ = c
                .stream
                .write_all(format!("{}\n", one_line(line)).as_bytes());
        }
    }

    /// Ends the client waiting for `what`, if it still waits.
    pub fn finish_waiting(&mut self, what: Waiting, line: &str) {
        if let Some(c) = self.clients.iter().find(|c| c.waiting == Some(what)) {
            let id = c.id;
            self.finish(id, line);
        }
    }
}

enum Step {
    Keep,
    Asked(Result<Request, String>),
    /// Gone, with what to tell it if anything.
    Drop(Option<&'static str>),
}

fn read_client(c: &mut Client) -> Step {
    let mut chunk = [0u8; 4096];
    if c.asked {
        // Only its hang-up matters now (its offer stays until the host ends it).
        return if hung_up(&c.stream) {
            Step::Drop(None)
        } else {
            Step::Keep
        };
    }
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => return Step::Asked(Request::decode(&c.buf)),
            Ok(n) if c.buf.len() + n > MAX_REQUEST => {
                return Step::Drop(Some("the request is too long"))
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if c.since.elapsed() > REQUEST_TIME => {
                return Step::Drop(Some("the request took too long"))
            }
            Err(_) => return Step::Keep,
        }
    }
}

/// The peer closed its end (not just its write side).
fn hung_up(stream: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut fd, 1, 0) };
    r > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `bulkhead-copy` / `-move` / `-open` in the guest: sends the request, prints what the
/// agent says, and returns the exit code (0 when the host carried it out).
pub fn run_client(request: &Request, socket: &Path) -> i32 {
    if let Err(e) = check(request) {
        say!("{e}");
        return 1;
    }
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            say!(
                "bulkhead: no guest agent at {} ({e}): is this a Bulkhead partition?",
                socket.display()
            );
            return 1;
        }
    };
    if stream.write_all(&request.encode()).is_err()
        || stream.shutdown(std::net::Shutdown::Write).is_err()
    {
        say!("bulkhead: the guest agent hung up");
        return 1;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Some(t) = line.strip_prefix("wait ") {
            say!("{t}");
        } else if let Some(t) = line.strip_prefix("ok ") {
            println!("{t}");
            return 0;
        } else if let Some(t) = line.strip_prefix("error ") {
            say!("bulkhead: {t}");
            return 1;
        }
    }
    say!("bulkhead: the guest agent ended without an answer");
    1
}

/// What the command can refuse before asking anyone.
fn check(request: &Request) -> Result<(), String> {
    match request {
        Request::Files { paths, .. } => {
            if paths.is_empty() {
                return Err("usage: bulkhead-copy FILE… (or bulkhead-move FILE…)".into());
            }
            for p in paths {
                let meta =
                    std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
                if meta.is_dir() {
                    return Err(format!(
                        "{}: bulkhead-copy copies files, not directories (make an archive first)",
                        p.display()
                    ));
                }
            }
            Ok(())
        }
        Request::Open { url, .. } => {
            bulkhead_agent_proto::check_url(url).map_err(|e| format!("{url}: {e}"))
        }
    }
}

/// Paths as the command line names them, made absolute against the working directory.
pub fn absolute(paths: &[PathBuf]) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    paths
        .iter()
        .map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                cwd.join(p)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_relative_paths_are_refused_by_the_server() {
        for r in [
            Request::Files {
                paths: vec!["/a b".into(), "/c\nd".into()],
                is_move: true,
            },
            Request::Open {
                url: "https://example.org/".into(),
                target: Some("browser".into()),
            },
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        assert!(Request::decode(b"copy\0relative").is_err());
        assert!(Request::decode(b"rm\0/x").is_err());
    }

    fn server() -> (tempfile::TempDir, Server, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = Server::bind(&path).unwrap();
        (dir, server, path)
    }

    fn poll_until(server: &mut Server) -> Vec<(u64, Result<Request, String>)> {
        for _ in 0..200 {
            let got = server.poll();
            if !got.is_empty() {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Vec::new()
    }

    #[test]
    fn a_client_gets_its_answer_and_the_exit_code_says_how_it_ended() {
        let (_dir, mut server, path) = server();
        let file = tempfile::NamedTempFile::new().unwrap();
        let request = Request::Files {
            paths: vec![file.path().to_path_buf()],
            is_move: false,
        };
        let client = {
            let (path, request) = (path.clone(), request.clone());
            std::thread::spawn(move || run_client(&request, &path))
        };
        let got = poll_until(&mut server);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, Ok(request));
        server.wait(got[0].0, Waiting::Offer(1), "choose the target");
        server.finish_waiting(Waiting::Offer(1), "ok copied 1 file(s)");
        assert_eq!(client.join().unwrap(), 0);
    }

    #[test]
    fn an_oversized_request_is_refused_and_the_agent_goes_on() {
        let (_dir, mut server, path) = server();
        let mut s = UnixStream::connect(&path).unwrap();
        let writer = std::thread::spawn(move || {
            let _ = s.write_all(&vec![b'a'; MAX_REQUEST + 4096]);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        });
        for _ in 0..100 {
            assert!(server.poll().is_empty());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(writer.join().unwrap(), "error the request is too long\n");
        assert!(server.clients.is_empty());
    }
}
