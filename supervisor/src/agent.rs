//! The host end of a partition's guest agent link (protocol: crate
//! `bulkhead-agent-proto`). Every byte comes from the guest and is hostile: a malformed
//! or oversized frame, an answer to a question never asked, a second kind of message
//! where one was due, or more traffic than [`FLOOD_MESSAGES`] / [`FLOOD_BYTES`] allow
//! cuts the *agent* off. The partition keeps running and says why ("agent cut off:
//! …"); nothing the agent sends afterwards is read, until the partition restarts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bulkhead_agent_proto::{
    AgentMessage, Decoder, EncodeError, Frame, HostMessage, PROTOCOL_VERSION,
};
/// Clipboard content, and the most one agent message carries.
pub use bulkhead_agent_proto::{Clipboard, FileEntry, MAX_PAYLOAD};

/// Requests in flight per agent.
pub const MAX_PENDING: usize = 8;
/// Answers kept until the app takes them.
pub const MAX_REPLIES: usize = 16;
/// How long an agent has to answer before the request fails (the agent stays).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Offers (files to send, URLs to open) an agent may have waiting for the host at once;
/// more are refused, not queued.
pub const MAX_OPEN_OFFERS: usize = 4;
/// Messages an agent may send in a burst, and per second after it. An answer to a
/// request the host made does not count (the host bounds those by asking).
pub const FLOOD_MESSAGES: u32 = 64;
/// Bytes an agent may send in a burst, and per second after it: two full frames.
pub const FLOOD_BYTES: u32 = 2 * bulkhead_agent_proto::MAX_FRAME as u32;

/// What the supervisor knows of a partition's agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentStatus {
    /// No `Hello` yet (booting, or no agent in this guest).
    #[default]
    Absent,
    /// Said `Hello` in our protocol version.
    Connected { features: u32 },
    /// Broke the protocol; its link is ignored until the partition restarts.
    CutOff { reason: String },
}

impl AgentStatus {
    /// For a person: "agent cut off: …" and the like.
    pub fn describe(&self) -> String {
        match self {
            AgentStatus::Absent => "no agent".to_string(),
            AgentStatus::Connected { .. } => "agent connected".to_string(),
            AgentStatus::CutOff { reason } => format!("agent cut off: {reason}"),
        }
    }
}

/// What the app may ask an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    Ping,
    ClipboardGet,
    ClipboardSet(Clipboard),
    /// `len` bytes at `offset` of file `index` of the agent's open offer `offer`.
    FileRead {
        offer: u32,
        index: u32,
        offset: u64,
        len: u32,
    },
    /// Prepare incoming `transfer` from partition `source`.
    FileIncoming {
        transfer: u32,
        source: String,
        files: Vec<FileEntry>,
    },
    FileWrite {
        transfer: u32,
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    FileCommit {
        transfer: u32,
        abort: bool,
    },
    /// Open this URL in the partition's browser.
    OpenUrl(String),
}

/// What an agent asks of the host on its user's behalf (the policy decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOffer {
    /// `bulkhead-copy` / `bulkhead-move` in the guest: send these files elsewhere.
    Files {
        offer: u32,
        is_move: bool,
        files: Vec<FileEntry>,
    },
    /// `bulkhead-open URL [--in TARGET]`: open it in another partition.
    OpenUrl {
        request: u32,
        url: String,
        target: Option<String>,
    },
}

/// The host's last word on an [`AgentOffer`], for the agent's waiting command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferOutcome {
    Files { offer: u32, error: Option<String> },
    OpenUrl { request: u32, error: Option<String> },
}

/// An agent's answer to request `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReply {
    Pong {
        id: u32,
    },
    Clipboard {
        id: u32,
        content: Option<Clipboard>,
    },
    ClipboardSet {
        id: u32,
    },
    FileData {
        id: u32,
        data: Vec<u8>,
    },
    /// A `FileIncoming`, `FileWrite`, `FileCommit` or `OpenUrl` succeeded.
    Done {
        id: u32,
    },
    /// The agent said it failed, or did not answer within [`REQUEST_TIMEOUT`].
    Failed {
        id: u32,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    #[error("the partition's agent is not connected")]
    NotConnected,
    #[error("{0}")]
    CutOff(String),
    #[error("the agent already has {MAX_PENDING} requests in flight")]
    Busy,
    #[error("the agent has no open offer {0} with that file")]
    NoSuchOffer(u32),
    #[error("request too large: {0}")]
    TooLarge(#[from] EncodeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Ping,
    Get,
    Set,
    /// A `FileRead` of at most this many bytes.
    Read(u32),
    /// Answered by `Done`.
    Done,
}

impl Asked {
    /// File and open-in answers go to [`AgentLink::take_reply`], the rest (the app's
    /// clipboard) to [`AgentLink::take_replies`].
    fn by_id(self) -> bool {
        matches!(self, Asked::Read(_) | Asked::Done)
    }
}

impl AgentReply {
    pub fn id(&self) -> u32 {
        match self {
            AgentReply::Pong { id }
            | AgentReply::Clipboard { id, .. }
            | AgentReply::ClipboardSet { id }
            | AgentReply::FileData { id, .. }
            | AgentReply::Done { id }
            | AgentReply::Failed { id, .. } => *id,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `burst` per second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            at: None,
        }
    }

    fn take(&mut self, n: usize, now: Instant) -> bool {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.burst).min(self.burst);
        }
        self.at = Some(now);
        self.tokens -= n as f64;
        self.tokens >= 0.0
    }
}

/// One process's agent link; a new process gets a new one.
pub struct AgentLink {
    decoder: Decoder<AgentMessage>,
    status: AgentStatus,
    next_id: u32,
    pending: HashMap<u32, (Asked, Instant)>,
    replies: VecDeque<AgentReply>,
    /// Answers to file and open-in requests, taken by id by whoever asked.
    by_id: HashMap<u32, AgentReply>,
    /// Offers waiting for the host (taken by [`AgentLink::take_offers`]).
    offers: VecDeque<AgentOffer>,
    /// Offers taken but not yet answered with an outcome: their files may be read.
    open_files: HashMap<u32, Vec<FileEntry>>,
    open_urls: std::collections::HashSet<u32>,
    messages: Bucket,
    bytes: Bucket,
    /// Bytes the host asked for (`FileRead`s not yet answered), which the flood limit
    /// does not count.
    asked_bytes: usize,
    /// After a restore: the entropy to send until a `Hello` says it arrived
    /// (`features::RESTORED`).
    restore: Option<Vec<u8>>,
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLink")
            .field("status", &self.status)
            .field("buffered", &self.decoder.buffered())
            .field("pending", &self.pending.len())
            .field("replies", &self.replies.len())
            .finish()
    }
}

impl Default for AgentLink {
    fn default() -> Self {
        AgentLink {
            decoder: Decoder::new(),
            status: AgentStatus::Absent,
            next_id: 1,
            pending: HashMap::new(),
            replies: VecDeque::new(),
            by_id: HashMap::new(),
            offers: VecDeque::new(),
            open_files: HashMap::new(),
            open_urls: std::collections::HashSet::new(),
            messages: Bucket::new(FLOOD_MESSAGES),
            bytes: Bucket::new(FLOOD_BYTES),
            asked_bytes: 0,
            restore: None,
        }
    }
}

impl AgentLink {
    pub fn status(&self) -> &AgentStatus {
        &self.status
    }

    /// Takes bytes from the agent. Returns the bytes to send back (our `Hello` after
    /// theirs), or the reason the agent was cut off just now.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<Vec<u8>, String> {
        if matches!(self.status, AgentStatus::CutOff { .. }) {
            return Ok(Vec::new());
        }
        let r = self.feed_inner(bytes, now);
        if let Err(reason) = &r {
            self.status = AgentStatus::CutOff {
                reason: reason.clone(),
            };
            self.fail_pending("the agent was cut off");
            self.offers.clear();
            self.open_files.clear();
            self.open_urls.clear();
            // Its decoder may hold up to a frame: let it go.
            self.decoder = Decoder::new();
        }
        r
    }

    fn feed_inner(&mut self, bytes: &[u8], now: Instant) -> Result<Vec<u8>, String> {
        // Bytes the host asked for are paid for already; the rest count.
        let asked = self.asked_bytes.min(bytes.len());
        self.asked_bytes -= asked;
        if !self.bytes.take(bytes.len() - asked, now) {
            return Err(format!(
                "flooding: more than {FLOOD_BYTES} bytes per second"
            ));
        }
        let mut msgs = Vec::new();
        let decoded = self.decoder.push(bytes, &mut msgs);
        let mut out = Vec::new();
        // The messages before a bad frame were well-formed: apply them first.
        for msg in msgs {
            let answer = answer_id(&msg).is_some_and(|id| self.pending.contains_key(&id));
            if !answer && !self.messages.take(1, now) {
                return Err(format!(
                    "flooding: more than {FLOOD_MESSAGES} messages per second"
                ));
            }
            out.extend(self.apply(msg)?);
        }
        decoded.map_err(|e| format!("malformed frame: {e}"))?;
        Ok(out)
    }

    fn apply(&mut self, msg: AgentMessage) -> Result<Vec<u8>, String> {
        let connected = matches!(self.status, AgentStatus::Connected { .. });
        let (id, asked, reply) = match msg {
            AgentMessage::Hello { version, features } => {
                if version != PROTOCOL_VERSION {
                    return Err(format!(
                        "speaks protocol version {version}, the host {PROTOCOL_VERSION}"
                    ));
                }
                // Again after a restart of the agent: its old requests and offers are
                // lost (its commands were told so when it went).
                self.fail_pending("the agent restarted");
                self.offers.clear();
                self.open_files.clear();
                self.open_urls.clear();
                self.status = AgentStatus::Connected { features };
                let hello = HostMessage::Hello {
                    version: PROTOCOL_VERSION,
                };
                let mut out = hello.encode().map_err(|e| e.to_string())?;
                if features & bulkhead_agent_proto::features::RESTORED != 0 {
                    self.restore = None;
                } else if let Some(entropy) = &self.restore {
                    // An agent that started after the snapshot never read our
                    // `Restored`: say it again, now that it listens.
                    let again = HostMessage::Restored {
                        entropy: entropy.clone(),
                    };
                    out.extend(again.encode().map_err(|e| e.to_string())?);
                }
                return Ok(out);
            }
            _ if !connected => return Err("sent a message before its Hello".into()),
            AgentMessage::Pong { id } => (id, Some(Asked::Ping), AgentReply::Pong { id }),
            AgentMessage::Clipboard { id, content } => {
                (id, Some(Asked::Get), AgentReply::Clipboard { id, content })
            }
            AgentMessage::ClipboardSet { id } => {
                (id, Some(Asked::Set), AgentReply::ClipboardSet { id })
            }
            AgentMessage::Failed { id, reason } => (id, None, AgentReply::Failed { id, reason }),
            AgentMessage::FileData { id, data } => {
                match self.pending.get(&id) {
                    Some((Asked::Read(len), _)) if data.len() > *len as usize => {
                        return Err(format!(
                            "answered read {id} with {} bytes, {len} were asked",
                            data.len()
                        ))
                    }
                    Some((Asked::Read(_), _)) => {}
                    _ => {
                        return Err(format!(
                            "answered request {id} with file data it never asked"
                        ))
                    }
                }
                let pending = self.pending.get(&id).map(|(a, _)| *a);
                (id, pending, AgentReply::FileData { id, data })
            }
            AgentMessage::Done { id } => (id, Some(Asked::Done), AgentReply::Done { id }),
            AgentMessage::FileOffer {
                offer,
                is_move,
                files,
            } => {
                return self.offer(
                    AgentOffer::Files {
                        offer,
                        is_move,
                        files,
                    },
                    offer,
                )
            }
            AgentMessage::OpenUrl {
                request,
                url,
                target,
            } => {
                return self.offer(
                    AgentOffer::OpenUrl {
                        request,
                        url,
                        target,
                    },
                    request,
                )
            }
        };
        let was = match self.pending.remove(&id) {
            Some((was, _)) if asked.is_none_or(|a| a == was) => was,
            Some(_) => return Err(format!("answered request {id} with the wrong kind")),
            None => return Err(format!("answered request {id}, which was never asked")),
        };
        if let Asked::Read(len) = was {
            // What was asked and not sent is no longer owed.
            let sent = match &reply {
                AgentReply::FileData { data, .. } => data.len(),
                _ => 0,
            };
            self.asked_bytes = self
                .asked_bytes
                .saturating_sub((len as usize).saturating_sub(sent));
        }
        if was.by_id() {
            keep_by_id(&mut self.by_id, id, reply);
        } else {
            push_reply(&mut self.replies, reply);
        }
        Ok(Vec::new())
    }

    /// An offer from the agent: queued for the host, or refused at once (too many
    /// waiting, or a number already in use) with an outcome the agent's command reads.
    fn offer(&mut self, offer: AgentOffer, number: u32) -> Result<Vec<u8>, String> {
        let waiting = self.offers.len() + self.open_files.len() + self.open_urls.len();
        let taken =
            match &offer {
                AgentOffer::Files { .. } => {
                    self.open_files.contains_key(&number)
                        || self.offers.iter().any(
                            |o| matches!(o, AgentOffer::Files { offer, .. } if *offer == number),
                        )
                }
                AgentOffer::OpenUrl { .. } => self.open_urls.contains(&number)
                    || self.offers.iter().any(
                        |o| matches!(o, AgentOffer::OpenUrl { request, .. } if *request == number),
                    ),
            };
        let refusal = if taken {
            Some(format!("offer {number} is already waiting"))
        } else if waiting >= MAX_OPEN_OFFERS {
            Some(format!(
                "{MAX_OPEN_OFFERS} requests from this partition are already waiting"
            ))
        } else {
            None
        };
        let Some(reason) = refusal else {
            self.offers.push_back(offer);
            return Ok(Vec::new());
        };
        tracing::info!(number, %reason, "refused an agent's offer");
        let outcome = match offer {
            AgentOffer::Files { offer, .. } => HostMessage::FileOutcome {
                offer,
                error: Some(reason),
            },
            AgentOffer::OpenUrl { request, .. } => HostMessage::OpenOutcome {
                request,
                error: Some(reason),
            },
        };
        outcome.encode().map_err(|e| e.to_string())
    }

    /// Offers the agent made since the last call; each stays open (its files readable)
    /// until [`AgentLink::outcome`] ends it.
    pub fn take_offers(&mut self) -> Vec<AgentOffer> {
        let offers: Vec<AgentOffer> = self.offers.drain(..).collect();
        for o in &offers {
            match o {
                AgentOffer::Files { offer, files, .. } => {
                    self.open_files.insert(*offer, files.clone());
                }
                AgentOffer::OpenUrl { request, .. } => {
                    self.open_urls.insert(*request);
                }
            }
        }
        offers
    }

    /// Ends an open offer: the frame telling the agent (its command prints the error,
    /// a move deletes its sources on success). `None` if no such offer is open (the
    /// agent restarted or was cut off meanwhile).
    pub fn outcome(&mut self, outcome: OfferOutcome) -> Result<Option<Vec<u8>>, EncodeError> {
        let msg = match outcome {
            OfferOutcome::Files { offer, error } => {
                if self.open_files.remove(&offer).is_none() {
                    return Ok(None);
                }
                HostMessage::FileOutcome { offer, error }
            }
            OfferOutcome::OpenUrl { request, error } => {
                if !self.open_urls.remove(&request) {
                    return Ok(None);
                }
                HostMessage::OpenOutcome { request, error }
            }
        };
        msg.encode().map(Some)
    }

    /// The answer to file or open-in request `id`, once it came.
    pub fn take_reply(&mut self, id: u32, now: Instant) -> Option<AgentReply> {
        self.expire(now);
        self.by_id.remove(&id)
    }

    fn fail_pending(&mut self, reason: &str) {
        let ids: Vec<(u32, Asked)> = self.pending.drain().map(|(id, (a, _))| (id, a)).collect();
        for (id, asked) in ids {
            let reply = AgentReply::Failed {
                id,
                reason: reason.to_string(),
            };
            if asked.by_id() {
                keep_by_id(&mut self.by_id, id, reply);
            } else {
                push_reply(&mut self.replies, reply);
            }
        }
        self.asked_bytes = 0;
    }

    /// The partition was just continued from a snapshot: its agent is mid-session with a
    /// process that no longer exists. Returns the `Restored` frame to send it, carrying
    /// `entropy` for the guest kernel; the agent answers with a new `Hello` (marked
    /// `features::RESTORED`), and until then this link counts it as absent. A `Hello`
    /// without the mark (an agent that was not listening yet) is answered with the
    /// `Restored` again.
    pub fn restored(&mut self, entropy: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let frame = HostMessage::Restored {
            entropy: entropy.to_vec(),
        }
        .encode()?;
        if !matches!(self.status, AgentStatus::CutOff { .. }) {
            self.status = AgentStatus::Absent;
        }
        self.restore = Some(entropy.to_vec());
        Ok(frame)
    }

    /// Encodes a request; returns its id and the frame to send.
    pub fn request(
        &mut self,
        request: AgentRequest,
        now: Instant,
    ) -> Result<(u32, Vec<u8>), AgentError> {
        match &self.status {
            AgentStatus::Absent => return Err(AgentError::NotConnected),
            AgentStatus::CutOff { reason } => {
                return Err(AgentError::CutOff(format!("agent cut off: {reason}")))
            }
            AgentStatus::Connected { .. } => {}
        }
        self.expire(now);
        if self.pending.len() >= MAX_PENDING {
            return Err(AgentError::Busy);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let (asked, msg) = match request {
            AgentRequest::Ping => (Asked::Ping, HostMessage::Ping { id }),
            AgentRequest::ClipboardGet => (Asked::Get, HostMessage::ClipboardGet { id }),
            AgentRequest::ClipboardSet(content) => {
                (Asked::Set, HostMessage::ClipboardSet { id, content })
            }
            AgentRequest::FileRead {
                offer,
                index,
                offset,
                len,
            } => {
                let known = self
                    .open_files
                    .get(&offer)
                    .is_some_and(|files| (index as usize) < files.len());
                if !known {
                    return Err(AgentError::NoSuchOffer(offer));
                }
                (
                    Asked::Read(len),
                    HostMessage::FileRead {
                        id,
                        offer,
                        index,
                        offset,
                        len,
                    },
                )
            }
            AgentRequest::FileIncoming {
                transfer,
                source,
                files,
            } => (
                Asked::Done,
                HostMessage::FileIncoming {
                    id,
                    transfer,
                    source,
                    files,
                },
            ),
            AgentRequest::FileWrite {
                transfer,
                index,
                offset,
                data,
            } => (
                Asked::Done,
                HostMessage::FileWrite {
                    id,
                    transfer,
                    index,
                    offset,
                    data,
                },
            ),
            AgentRequest::FileCommit { transfer, abort } => (
                Asked::Done,
                HostMessage::FileCommit {
                    id,
                    transfer,
                    abort,
                },
            ),
            AgentRequest::OpenUrl(url) => (Asked::Done, HostMessage::OpenUrl { id, url }),
        };
        let frame = msg.encode()?;
        if let Asked::Read(len) = asked {
            // The answer's frame: the data and its header (kind, id, length).
            self.asked_bytes += len as usize + 13;
        }
        self.pending.insert(id, (asked, now));
        Ok((id, frame))
    }

    /// Fails the requests older than [`REQUEST_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) > REQUEST_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some((asked, _)) = self.pending.remove(&id) else {
                continue;
            };
            let reply = AgentReply::Failed {
                id,
                reason: format!("the agent did not answer within {REQUEST_TIMEOUT:?}"),
            };
            if let Asked::Read(len) = asked {
                self.asked_bytes = self.asked_bytes.saturating_sub(len as usize + 13);
            }
            if asked.by_id() {
                keep_by_id(&mut self.by_id, id, reply);
            } else {
                push_reply(&mut self.replies, reply);
            }
        }
    }

    pub fn take_replies(&mut self, now: Instant) -> Vec<AgentReply> {
        self.expire(now);
        self.replies.drain(..).collect()
    }
}

/// The request an agent message answers, if it is an answer.
fn answer_id(msg: &AgentMessage) -> Option<u32> {
    match msg {
        AgentMessage::Pong { id }
        | AgentMessage::Clipboard { id, .. }
        | AgentMessage::ClipboardSet { id }
        | AgentMessage::Failed { id, .. }
        | AgentMessage::FileData { id, .. }
        | AgentMessage::Done { id } => Some(*id),
        AgentMessage::Hello { .. }
        | AgentMessage::FileOffer { .. }
        | AgentMessage::OpenUrl { .. } => None,
    }
}

/// Fresh random bytes from the host kernel for a restored guest (see
/// [`AgentLink::restored`]).
pub fn host_entropy() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Answers nobody took (their asker gave up) must not pile up.
fn keep_by_id(by_id: &mut HashMap<u32, AgentReply>, id: u32, reply: AgentReply) {
    if by_id.len() >= 4 * MAX_PENDING {
        if let Some(&oldest) = by_id.keys().min_by_key(|k| k.wrapping_sub(id)) {
            by_id.remove(&oldest);
        }
    }
    by_id.insert(id, reply);
}

fn push_reply(replies: &mut VecDeque<AgentReply>, reply: AgentReply) {
    if replies.len() >= MAX_REPLIES {
        replies.pop_front();
    }
    replies.push_back(reply);
}

#[cfg(test)]
mod tests {
    use bulkhead_agent_proto::{features, MAX_BODY};

    use super::*;

    fn hello() -> Vec<u8> {
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: features::CLIPBOARD,
        }
        .encode()
        .unwrap()
    }

    fn connected(now: Instant) -> AgentLink {
        let mut link = AgentLink::default();
        let back = link.feed(&hello(), now).unwrap();
        assert_eq!(
            HostMessage::decode_body(&back[4..]).unwrap(),
            HostMessage::Hello {
                version: PROTOCOL_VERSION
            }
        );
        link
    }

    fn offer(n: u32) -> Vec<u8> {
        AgentMessage::FileOffer {
            offer: n,
            is_move: false,
            files: vec![FileEntry {
                name: "a.txt".into(),
                size: 3 * MAX_PAYLOAD as u64,
            }],
        }
        .encode()
        .unwrap()
    }

    fn decode_host(frame: &[u8]) -> Vec<HostMessage> {
        let mut d = Decoder::<HostMessage>::new();
        let mut msgs = Vec::new();
        d.push(frame, &mut msgs).unwrap();
        msgs
    }

    #[test]
    fn a_file_offer_waits_for_the_host_and_only_its_files_can_be_read() {
        let now = Instant::now();
        let mut link = connected(now);
        assert_eq!(link.feed(&offer(4), now), Ok(Vec::new()));
        let read = |offer, index| AgentRequest::FileRead {
            offer,
            index,
            offset: 0,
            len: 10,
        };
        // Not taken yet: not open, so not readable.
        assert_eq!(
            link.request(read(4, 0), now),
            Err(AgentError::NoSuchOffer(4))
        );
        assert!(matches!(
            link.take_offers().as_slice(),
            [AgentOffer::Files { offer: 4, .. }]
        ));
        assert_eq!(
            link.request(read(4, 1), now),
            Err(AgentError::NoSuchOffer(4))
        );
        let (id, _) = link.request(read(4, 0), now).unwrap();
        let data = AgentMessage::FileData {
            id,
            data: b"0123456789".to_vec(),
        };
        link.feed(&data.encode().unwrap(), now).unwrap();
        // The answer is kept for whoever asked, not handed to the clipboard's queue.
        assert!(link.take_replies(now).is_empty());
        assert_eq!(
            link.take_reply(id, now),
            Some(AgentReply::FileData {
                id,
                data: b"0123456789".to_vec()
            })
        );
        // The outcome ends the offer: once.
        let frame = link
            .outcome(OfferOutcome::Files {
                offer: 4,
                error: None,
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            decode_host(&frame),
            vec![HostMessage::FileOutcome {
                offer: 4,
                error: None
            }]
        );
        assert_eq!(
            link.outcome(OfferOutcome::Files {
                offer: 4,
                error: None
            }),
            Ok(None)
        );
        assert_eq!(
            link.request(read(4, 0), now),
            Err(AgentError::NoSuchOffer(4))
        );
    }

    #[test]
    fn more_data_than_a_read_asked_for_cuts_the_agent_off() {
        let now = Instant::now();
        let mut link = connected(now);
        link.feed(&offer(1), now).unwrap();
        link.take_offers();
        let (id, _) = link
            .request(
                AgentRequest::FileRead {
                    offer: 1,
                    index: 0,
                    offset: 0,
                    len: 4,
                },
                now,
            )
            .unwrap();
        let data = AgentMessage::FileData {
            id,
            data: vec![0; 5],
        };
        let reason = link.feed(&data.encode().unwrap(), now).unwrap_err();
        assert!(reason.contains("4 were asked"), "{reason}");
    }

    #[test]
    fn too_many_waiting_offers_are_refused_with_an_outcome_not_queued() {
        let now = Instant::now();
        let mut link = connected(now);
        for n in 0..MAX_OPEN_OFFERS as u32 {
            assert_eq!(link.feed(&offer(n), now), Ok(Vec::new()));
        }
        let back = link.feed(&offer(99), now).unwrap();
        assert!(matches!(
            decode_host(&back).as_slice(),
            [HostMessage::FileOutcome { offer: 99, error: Some(e) }] if e.contains("already waiting")
        ));
        // A number already waiting is refused too.
        let mut link = connected(now);
        link.feed(&offer(7), now).unwrap();
        let back = link.feed(&offer(7), now).unwrap();
        assert!(matches!(
            decode_host(&back).as_slice(),
            [HostMessage::FileOutcome {
                offer: 7,
                error: Some(_)
            }]
        ));
        assert_eq!(link.take_offers().len(), 1);
    }

    #[test]
    fn file_data_the_host_asked_for_is_not_a_flood() {
        let now = Instant::now();
        let mut link = connected(now);
        link.feed(&offer(1), now).unwrap();
        link.take_offers();
        // Many full-size answers within one instant: far beyond the unsolicited budget,
        // all asked for.
        for round in 0..(2 * FLOOD_MESSAGES) {
            let mut frames = Vec::new();
            let mut ids = Vec::new();
            for k in 0..MAX_PENDING as u64 {
                let (id, _) = link
                    .request(
                        AgentRequest::FileRead {
                            offer: 1,
                            index: 0,
                            offset: k * MAX_PAYLOAD as u64,
                            len: MAX_PAYLOAD as u32,
                        },
                        now,
                    )
                    .unwrap();
                ids.push(id);
                frames.extend(
                    AgentMessage::FileData {
                        id,
                        data: vec![round as u8; MAX_PAYLOAD],
                    }
                    .encode()
                    .unwrap(),
                );
            }
            link.feed(&frames, now).unwrap();
            for id in ids {
                assert!(link.take_reply(id, now).is_some());
            }
        }
        assert!(matches!(link.status(), AgentStatus::Connected { .. }));
    }

    #[test]
    fn an_open_url_request_waits_for_the_host_and_its_outcome_goes_back_once() {
        let now = Instant::now();
        let mut link = connected(now);
        let ask = AgentMessage::OpenUrl {
            request: 3,
            url: "https://example.org/".into(),
            target: None,
        };
        assert_eq!(link.feed(&ask.encode().unwrap(), now), Ok(Vec::new()));
        assert_eq!(
            link.take_offers(),
            vec![AgentOffer::OpenUrl {
                request: 3,
                url: "https://example.org/".into(),
                target: None
            }]
        );
        let done = OfferOutcome::OpenUrl {
            request: 3,
            error: Some("denied".into()),
        };
        assert!(link.outcome(done.clone()).unwrap().is_some());
        assert_eq!(link.outcome(done), Ok(None));
        // Done for an OpenUrl the host sent goes to whoever asked.
        let (id, _) = link
            .request(AgentRequest::OpenUrl("https://example.org/".into()), now)
            .unwrap();
        link.feed(&AgentMessage::Done { id }.encode().unwrap(), now)
            .unwrap();
        assert_eq!(link.take_reply(id, now), Some(AgentReply::Done { id }));
    }

    #[test]
    fn unasked_file_data_cuts_the_agent_off() {
        let now = Instant::now();
        let mut link = connected(now);
        let data = AgentMessage::FileData {
            id: 1,
            data: vec![0; 8],
        };
        assert!(link.feed(&data.encode().unwrap(), now).is_err());
        let mut link = connected(now);
        assert!(link
            .feed(&AgentMessage::Done { id: 9 }.encode().unwrap(), now)
            .is_err());
    }

    #[test]
    fn a_restored_guest_gets_the_entropy_and_counts_as_absent_until_its_new_hello() {
        let now = Instant::now();
        let mut link = connected(now);
        let entropy: Vec<u8> = (0..64).collect();
        let frame = link.restored(&entropy).unwrap();
        assert_eq!(
            HostMessage::decode_body(&frame[4..]).unwrap(),
            HostMessage::Restored {
                entropy: entropy.clone()
            }
        );
        assert_eq!(link.status(), &AgentStatus::Absent);
        assert_eq!(
            link.request(AgentRequest::Ping, now).unwrap_err(),
            AgentError::NotConnected
        );
        // An agent that started after the snapshot says a plain Hello: it is
        // connected, and gets the entropy again.
        let back = link.feed(&hello(), now).unwrap();
        let mut d = Decoder::<HostMessage>::new();
        let mut msgs = Vec::new();
        d.push(&back, &mut msgs).unwrap();
        assert_eq!(
            msgs,
            vec![
                HostMessage::Hello {
                    version: PROTOCOL_VERSION
                },
                HostMessage::Restored {
                    entropy: entropy.clone()
                }
            ]
        );
        assert!(matches!(link.status(), AgentStatus::Connected { .. }));
        assert!(link.request(AgentRequest::Ping, now).is_ok());
        // Its answer to that one is marked: nothing more is sent.
        let acked = AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            features: features::CLIPBOARD | features::RESTORED,
        }
        .encode()
        .unwrap();
        let back = link.feed(&acked, now).unwrap();
        let mut msgs = Vec::new();
        d.push(&back, &mut msgs).unwrap();
        assert_eq!(
            msgs,
            vec![HostMessage::Hello {
                version: PROTOCOL_VERSION
            }]
        );
        assert_eq!(host_entropy().unwrap().len(), 64);
    }

    fn cut_reason(link: &AgentLink) -> String {
        match link.status() {
            AgentStatus::CutOff { reason } => reason.clone(),
            other => panic!("not cut off: {other:?}"),
        }
    }

    #[test]
    fn an_answer_reaches_the_app_once_and_only_for_what_was_asked() {
        let now = Instant::now();
        let mut link = connected(now);
        let (id, frame) = link.request(AgentRequest::ClipboardGet, now).unwrap();
        assert_eq!(
            HostMessage::decode_body(&frame[4..]).unwrap(),
            HostMessage::ClipboardGet { id }
        );
        let content = Some(Clipboard::Text("héllo".into()));
        let answer = AgentMessage::Clipboard {
            id,
            content: content.clone(),
        };
        link.feed(&answer.encode().unwrap(), now).unwrap();
        assert_eq!(
            link.take_replies(now),
            vec![AgentReply::Clipboard { id, content }]
        );
        // The same answer again was never asked for.
        assert!(link.feed(&answer.encode().unwrap(), now).is_err());
        assert!(cut_reason(&link).contains("never asked"));
    }

    #[test]
    fn an_oversized_frame_cuts_the_agent_off_before_its_body_arrives() {
        let now = Instant::now();
        let mut link = connected(now);
        let header = (MAX_BODY as u32 + 1).to_le_bytes();
        let reason = link.feed(&header, now).unwrap_err();
        assert!(reason.contains("more than the limit"), "{reason}");
        // Whatever follows is ignored, and requests are refused with the reason.
        assert_eq!(link.feed(&[0; 100], now), Ok(Vec::new()));
        assert!(matches!(
            link.request(AgentRequest::Ping, now),
            Err(AgentError::CutOff(r)) if r.starts_with("agent cut off: malformed frame")
        ));
    }

    #[test]
    fn garbage_and_messages_before_hello_cut_the_agent_off() {
        let now = Instant::now();
        let mut link = AgentLink::default();
        let pong = AgentMessage::Pong { id: 1 }.encode().unwrap();
        assert!(link
            .feed(&pong, now)
            .unwrap_err()
            .contains("before its Hello"));
        let mut link = connected(now);
        assert!(link
            .feed(&[3, 0, 0, 0, 0x42, 1, 2], now)
            .unwrap_err()
            .contains("unknown message kind 0x42"));
        let mut link = AgentLink::default();
        let old = AgentMessage::Hello {
            version: PROTOCOL_VERSION + 1,
            features: 0,
        };
        assert!(link
            .feed(&old.encode().unwrap(), now)
            .unwrap_err()
            .contains("protocol version"));
    }

    #[test]
    fn a_flood_of_messages_is_cut_off_but_a_steady_pace_is_not() {
        let start = Instant::now();
        let mut steady = connected(start);
        for i in 0..(4 * FLOOD_MESSAGES) {
            // Hellos are the only unsolicited message, so the flood is made of them.
            let at =
                start + Duration::from_millis(u64::from(i) * 1000 / u64::from(FLOOD_MESSAGES) * 2);
            steady.feed(&hello(), at).unwrap();
        }
        let mut flood = connected(start);
        let many: Vec<u8> = (0..=FLOOD_MESSAGES).flat_map(|_| hello()).collect();
        let reason = flood.feed(&many, start).unwrap_err();
        assert!(reason.contains("messages per second"), "{reason}");
    }

    #[test]
    fn a_flood_of_bytes_is_cut_off() {
        let now = Instant::now();
        let mut link = connected(now);
        // Partial frames too: bytes count, not just messages.
        let reason = link
            .feed(&vec![0u8; FLOOD_BYTES as usize + 1], now)
            .unwrap_err();
        assert!(reason.contains("bytes per second"), "{reason}");
    }

    #[test]
    fn an_unanswered_request_fails_without_cutting_the_agent_off() {
        let now = Instant::now();
        let mut link = connected(now);
        let (id, _) = link.request(AgentRequest::Ping, now).unwrap();
        let later = now + REQUEST_TIMEOUT + Duration::from_secs(1);
        assert!(matches!(
            link.take_replies(later).as_slice(),
            [AgentReply::Failed { id: i, reason }] if *i == id && reason.contains("did not answer")
        ));
        assert!(matches!(link.status(), AgentStatus::Connected { .. }));
        // A late answer is then one never asked.
        let pong = AgentMessage::Pong { id }.encode().unwrap();
        assert!(link.feed(&pong, later).is_err());
    }

    #[test]
    fn the_wrong_kind_of_answer_cuts_the_agent_off_and_requests_are_bounded() {
        let now = Instant::now();
        let mut link = connected(now);
        let (id, _) = link.request(AgentRequest::Ping, now).unwrap();
        for _ in 1..MAX_PENDING {
            link.request(AgentRequest::Ping, now).unwrap();
        }
        assert_eq!(link.request(AgentRequest::Ping, now), Err(AgentError::Busy));
        let wrong = AgentMessage::ClipboardSet { id }.encode().unwrap();
        assert!(link.feed(&wrong, now).unwrap_err().contains("wrong kind"));
    }
}
