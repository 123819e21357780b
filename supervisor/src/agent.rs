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
pub use bulkhead_agent_proto::{Clipboard, MAX_PAYLOAD};

/// Requests in flight per agent.
pub const MAX_PENDING: usize = 8;
/// Answers kept until the app takes them.
pub const MAX_REPLIES: usize = 16;
/// How long an agent has to answer before the request fails (the agent stays).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages an agent may send in a burst, and per second after it.
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
    #[error("request too large: {0}")]
    TooLarge(#[from] EncodeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Ping,
    Get,
    Set,
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
    messages: Bucket,
    bytes: Bucket,
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
            messages: Bucket::new(FLOOD_MESSAGES),
            bytes: Bucket::new(FLOOD_BYTES),
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
            self.pending.clear();
            // Its decoder may hold up to a frame: let it go.
            self.decoder = Decoder::new();
        }
        r
    }

    fn feed_inner(&mut self, bytes: &[u8], now: Instant) -> Result<Vec<u8>, String> {
        if !self.bytes.take(bytes.len(), now) {
            return Err(format!(
                "flooding: more than {FLOOD_BYTES} bytes per second"
            ));
        }
        let mut msgs = Vec::new();
        let decoded = self.decoder.push(bytes, &mut msgs);
        let mut out = Vec::new();
        // The messages before a bad frame were well-formed: apply them first.
        for msg in msgs {
            if !self.messages.take(1, now) {
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
                // Again after a restart of the agent: its old requests are lost.
                for (id, _) in self.pending.drain() {
                    push_reply(
                        &mut self.replies,
                        AgentReply::Failed {
                            id,
                            reason: "the agent restarted".into(),
                        },
                    );
                }
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
            AgentMessage::FileOffer { offer, files, .. } => {
                // The transfer engine is not wired in yet: refuse politely, so the
                // in-guest command ends with a reason instead of hanging.
                tracing::info!(offer, files = files.len(), "refused a file offer");
                let outcome = HostMessage::FileOutcome {
                    offer,
                    error: Some("file transfer is not available on this host yet".into()),
                };
                return outcome.encode().map_err(|e| e.to_string());
            }
            // The host asks no file requests yet, so these answer nothing it asked.
            AgentMessage::FileData { id, .. } | AgentMessage::Done { id } => {
                return Err(format!("answered request {id} with an unasked file reply"));
            }
        };
        match self.pending.remove(&id) {
            Some((was, _)) if asked.is_none_or(|a| a == was) => {}
            Some(_) => return Err(format!("answered request {id} with the wrong kind")),
            None => return Err(format!("answered request {id}, which was never asked")),
        }
        push_reply(&mut self.replies, reply);
        Ok(Vec::new())
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
        };
        let frame = msg.encode()?;
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
            self.pending.remove(&id);
            push_reply(
                &mut self.replies,
                AgentReply::Failed {
                    id,
                    reason: format!("the agent did not answer within {REQUEST_TIMEOUT:?}"),
                },
            );
        }
    }

    pub fn take_replies(&mut self, now: Instant) -> Vec<AgentReply> {
        self.expire(now);
        self.replies.drain(..).collect()
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

    #[test]
    fn a_file_offer_is_refused_with_an_outcome_until_transfers_exist() {
        let now = Instant::now();
        let mut link = connected(now);
        let offer = AgentMessage::FileOffer {
            offer: 4,
            is_move: true,
            files: vec![bulkhead_agent_proto::FileEntry {
                name: "a.txt".into(),
                size: 3,
            }],
        };
        let back = link.feed(&offer.encode().unwrap(), now).unwrap();
        assert!(matches!(
            HostMessage::decode_body(&back[4..]).unwrap(),
            HostMessage::FileOutcome {
                offer: 4,
                error: Some(_)
            }
        ));
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
