//! The guest agent's wire protocol, spoken over the partition's dedicated virtio-console
//! (`/dev/hvc1` in the guest) and carried to the supervisor inside the control protocol.
//!
//! A frame is a 4-byte little-endian body length, then the body: one kind byte and the
//! kind's fields. Integers are little-endian; a byte string is a `u32` length and the
//! bytes. The body never exceeds [`MAX_BODY`] ([`MAX_PAYLOAD`] of content plus room for
//! the fields around it), so a decoder never holds more than [`MAX_FRAME`] bytes.
//!
//! Why a hand-written binary encoding and not JSON: clipboard images (and later file
//! chunks) are raw bytes, which JSON would spell as number arrays (up to 4 bytes per
//! byte); and every field here is read by a decoder short enough to audit and fuzz, that
//! checks each length against the bytes left and the caps before touching them.
//!
//! Versioning: each side's first message is `Hello` with [`PROTOCOL_VERSION`]; the host
//! refuses an agent of another version. Kinds are never renumbered, only added: version 2
//! added `Restored` (a guest continued from a snapshot); later versions may add file
//! transfer (`FileOffer`/`FileChunk`/`FileDone` frames of at most [`MAX_PAYLOAD`] each)
//! and open-in (`OpenUrl`); a peer of an older version refuses them as unknown.

use thiserror::Error;

/// Bumped on any incompatible change; kinds are only ever added.
/// 2: [`HostMessage::Restored`].
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of host entropy in one [`HostMessage::Restored`].
pub const MAX_ENTROPY: usize = 256;
/// The most content one message carries (clipboard bytes; later one file chunk).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Text fields (reasons, names).
pub const MAX_TEXT: usize = 1024;
/// The largest body: a payload, a text field and the fixed fields around them.
pub const MAX_BODY: usize = MAX_PAYLOAD + MAX_TEXT + 64;
/// Header (length) plus the largest body.
pub const MAX_FRAME: usize = 4 + MAX_BODY;
/// PNG's 8-byte signature, which image clipboard content must start with.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Feature bits an agent announces in its `Hello`.
pub mod features {
    /// Reads and owns the X CLIPBOARD selection.
    pub const CLIPBOARD: u32 = 1;
    /// This `Hello` answers a `Restored`: the host's entropy reached the kernel. A
    /// restored guest's `Hello` without it (its agent started after the snapshot, so
    /// the `Restored` found no reader) gets the `Restored` again.
    pub const RESTORED: u32 = 2;
}

/// What a clipboard holds: UTF-8 text or a PNG image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clipboard {
    Text(String),
    Png(Vec<u8>),
}

impl Clipboard {
    pub fn len(&self) -> usize {
        match self {
            Clipboard::Text(t) => t.len(),
            Clipboard::Png(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The X target / MIME type this content is offered as.
    pub fn mime(&self) -> &'static str {
        match self {
            Clipboard::Text(_) => "text/plain;charset=utf-8",
            Clipboard::Png(_) => "image/png",
        }
    }
}

/// Host → agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// The host's answer to the agent's `Hello`.
    Hello {
        version: u16,
    },
    Ping {
        id: u32,
    },
    /// Read the CLIPBOARD selection; answered by `Clipboard` or `Failed`.
    ClipboardGet {
        id: u32,
    },
    /// Own the CLIPBOARD selection with this content; answered by `ClipboardSet` or
    /// `Failed`.
    ClipboardSet {
        id: u32,
        content: Clipboard,
    },
    /// The guest was just continued from a snapshot, as one of possibly many clones:
    /// mix `entropy` (fresh host random bytes, at most [`MAX_ENTROPY`]) into the
    /// kernel's pool and reseed it, then say `Hello` again (the host's end of the link
    /// is new).
    Restored {
        entropy: Vec<u8>,
    },
}

/// Agent → host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMessage {
    /// The agent's first message (again after it restarted).
    Hello {
        version: u16,
        features: u32,
    },
    Pong {
        id: u32,
    },
    /// The CLIPBOARD content, `None` when the selection is empty or unowned.
    Clipboard {
        id: u32,
        content: Option<Clipboard>,
    },
    /// The agent owns the CLIPBOARD selection with the content it was sent.
    ClipboardSet {
        id: u32,
    },
    /// The request `id` failed, for a person.
    Failed {
        id: u32,
        reason: String,
    },
}

mod kind {
    pub const HOST_HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const CLIPBOARD_GET: u8 = 0x03;
    pub const CLIPBOARD_SET: u8 = 0x04;
    pub const RESTORED: u8 = 0x05;
    pub const AGENT_HELLO: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const CLIPBOARD: u8 = 0x83;
    pub const CLIPBOARD_SET_DONE: u8 = 0x84;
    pub const FAILED: u8 = 0x85;

    pub const CONTENT_NONE: u8 = 0;
    pub const CONTENT_TEXT: u8 = 1;
    pub const CONTENT_PNG: u8 = 2;
}

/// Why bytes are not a valid frame. Every variant ends the link: a peer that sends one
/// is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes announced, more than the limit of {MAX_BODY}")]
    Oversized { len: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{field} runs past the end of the frame")]
    Truncated { field: &'static str },
    #[error("{field} holds {len} bytes, more than the limit of {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} trailing byte(s) after the message")]
    Trailing(usize),
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("unknown clipboard content type {0}")]
    UnknownContent(u8),
    #[error("image clipboard content is not a PNG")]
    NotPng,
}

/// Why a message cannot be encoded (its fields exceed the caps).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} holds {len} bytes, more than the limit of {max}")]
pub struct EncodeError {
    pub field: &'static str,
    pub len: usize,
    pub max: usize,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Self {
        // Header placeholder, filled in by `finish`.
        Writer(vec![0, 0, 0, 0, kind])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: &'static str, b: &[u8], max: usize) -> Result<(), EncodeError> {
        if b.len() > max {
            return Err(EncodeError {
                field,
                len: b.len(),
                max,
            });
        }
        // b.len() <= MAX_PAYLOAD fits u32.
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn content(&mut self, c: Option<&Clipboard>) -> Result<(), EncodeError> {
        match c {
            None => self.u8(kind::CONTENT_NONE),
            Some(Clipboard::Text(t)) => {
                self.u8(kind::CONTENT_TEXT);
                self.bytes("clipboard text", t.as_bytes(), MAX_PAYLOAD)?;
            }
            Some(Clipboard::Png(p)) => {
                self.u8(kind::CONTENT_PNG);
                self.bytes("clipboard image", p, MAX_PAYLOAD)?;
            }
        }
        Ok(())
    }
    fn finish(mut self) -> Vec<u8> {
        let body = self.0.len() - 4;
        // body <= MAX_BODY: every variable field was capped above.
        self.0[..4].copy_from_slice(&(body as u32).to_le_bytes());
        self.0
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        self.take(len, field)
    }
    fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::NotUtf8 { field })
    }
    fn content(&mut self) -> Result<Option<Clipboard>, DecodeError> {
        match self.u8("clipboard content type")? {
            kind::CONTENT_NONE => Ok(None),
            kind::CONTENT_TEXT => Ok(Some(Clipboard::Text(
                self.text("clipboard text", MAX_PAYLOAD)?,
            ))),
            kind::CONTENT_PNG => {
                let b = self.bytes("clipboard image", MAX_PAYLOAD)?;
                if !b.starts_with(&PNG_SIGNATURE) {
                    return Err(DecodeError::NotPng);
                }
                Ok(Some(Clipboard::Png(b.to_vec())))
            }
            other => Err(DecodeError::UnknownContent(other)),
        }
    }
    fn end(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }
}

/// A message type that travels in frames.
pub trait Frame: Sized {
    /// The whole frame (header and body).
    fn encode(&self) -> Result<Vec<u8>, EncodeError>;
    /// Decodes one body (without the length header).
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError>;
}

impl Frame for HostMessage {
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let w = match self {
            HostMessage::Hello { version } => {
                let mut w = Writer::new(kind::HOST_HELLO);
                w.u16(*version);
                w
            }
            HostMessage::Ping { id } => {
                let mut w = Writer::new(kind::PING);
                w.u32(*id);
                w
            }
            HostMessage::ClipboardGet { id } => {
                let mut w = Writer::new(kind::CLIPBOARD_GET);
                w.u32(*id);
                w
            }
            HostMessage::ClipboardSet { id, content } => {
                let mut w = Writer::new(kind::CLIPBOARD_SET);
                w.u32(*id);
                w.content(Some(content))?;
                w
            }
            HostMessage::Restored { entropy } => {
                let mut w = Writer::new(kind::RESTORED);
                w.bytes("entropy", entropy, MAX_ENTROPY)?;
                w
            }
        };
        Ok(w.finish())
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (&k, rest) = body.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader { rest };
        let msg = match k {
            kind::HOST_HELLO => HostMessage::Hello {
                version: r.u16("version")?,
            },
            kind::PING => HostMessage::Ping { id: r.u32("id")? },
            kind::CLIPBOARD_GET => HostMessage::ClipboardGet { id: r.u32("id")? },
            kind::CLIPBOARD_SET => {
                let id = r.u32("id")?;
                let content = r
                    .content()?
                    .ok_or(DecodeError::UnknownContent(kind::CONTENT_NONE))?;
                HostMessage::ClipboardSet { id, content }
            }
            kind::RESTORED => HostMessage::Restored {
                entropy: r.bytes("entropy", MAX_ENTROPY)?.to_vec(),
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.end()?;
        Ok(msg)
    }
}

impl Frame for AgentMessage {
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let w = match self {
            AgentMessage::Hello { version, features } => {
                let mut w = Writer::new(kind::AGENT_HELLO);
                w.u16(*version);
                w.u32(*features);
                w
            }
            AgentMessage::Pong { id } => {
                let mut w = Writer::new(kind::PONG);
                w.u32(*id);
                w
            }
            AgentMessage::Clipboard { id, content } => {
                let mut w = Writer::new(kind::CLIPBOARD);
                w.u32(*id);
                w.content(content.as_ref())?;
                w
            }
            AgentMessage::ClipboardSet { id } => {
                let mut w = Writer::new(kind::CLIPBOARD_SET_DONE);
                w.u32(*id);
                w
            }
            AgentMessage::Failed { id, reason } => {
                let mut w = Writer::new(kind::FAILED);
                w.u32(*id);
                w.bytes("reason", reason.as_bytes(), MAX_TEXT)?;
                w
            }
        };
        Ok(w.finish())
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (&k, rest) = body.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader { rest };
        let msg = match k {
            kind::AGENT_HELLO => AgentMessage::Hello {
                version: r.u16("version")?,
                features: r.u32("features")?,
            },
            kind::PONG => AgentMessage::Pong { id: r.u32("id")? },
            kind::CLIPBOARD => AgentMessage::Clipboard {
                id: r.u32("id")?,
                content: r.content()?,
            },
            kind::CLIPBOARD_SET_DONE => AgentMessage::ClipboardSet { id: r.u32("id")? },
            kind::FAILED => AgentMessage::Failed {
                id: r.u32("id")?,
                reason: r.text("reason", MAX_TEXT)?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.end()?;
        Ok(msg)
    }
}

/// Reassembles frames from a byte stream that arrives in pieces of any size. Holds at
/// most [`MAX_FRAME`] bytes: a header announcing more is refused before anything of its
/// body is kept.
pub struct Decoder<M> {
    buf: Vec<u8>,
    /// The body length once the header is complete.
    want: Option<usize>,
    /// A decoder that failed stays failed: the stream has lost its framing.
    failed: Option<DecodeError>,
    _message: std::marker::PhantomData<M>,
}

impl<M: Frame> Default for Decoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Frame> Decoder<M> {
    pub fn new() -> Self {
        Decoder {
            buf: Vec::new(),
            want: None,
            failed: None,
            _message: std::marker::PhantomData,
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `bytes`; every complete message goes to `out` in order. On the first error
    /// the rest is ignored and every later call returns the same error.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<M>) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !bytes.is_empty() {
            let need = match self.want {
                None => 4 - self.buf.len(),
                Some(len) => len - self.buf.len(),
            };
            let n = need.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() < self.want.unwrap_or(4) {
                continue;
            }
            match self.want {
                None => {
                    let len =
                        u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    self.buf.clear();
                    if len > MAX_BODY {
                        return Err(self.fail(DecodeError::Oversized { len }));
                    }
                    if len == 0 {
                        return Err(self.fail(DecodeError::Empty));
                    }
                    self.buf.reserve_exact(len);
                    self.want = Some(len);
                }
                Some(_) => {
                    let msg = M::decode_body(&self.buf);
                    self.buf = Vec::new();
                    self.want = None;
                    match msg {
                        Ok(m) => out.push(m),
                        Err(e) => return Err(self.fail(e)),
                    }
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.buf = Vec::new();
        self.failed = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests;
