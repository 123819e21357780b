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
//! added `Restored` (a guest continued from a snapshot); version 3 added file transfer
//! (the source agent's `FileOffer`, the host pulling it with `FileRead`/`FileData` chunks
//! of at most [`MAX_PAYLOAD`], pushing it to the target with `FileIncoming`/`FileWrite`/
//! `FileCommit`, and ending the offer with `FileOutcome`); version 4 added open-in (the
//! source agent's `OpenUrl`, the host's `OpenUrl` to the target's agent, and `OpenOutcome`
//! back to the source); a peer of an older version refuses new kinds as unknown.

use thiserror::Error;

/// Bumped on any incompatible change; kinds are only ever added.
/// 2: [`HostMessage::Restored`].
/// 3: file transfer ([`AgentMessage::FileOffer`], [`HostMessage::FileRead`], ...).
/// 4: open-in ([`AgentMessage::OpenUrl`], [`HostMessage::OpenUrl`], [`HostMessage::OpenOutcome`]).
pub const PROTOCOL_VERSION: u16 = 4;
/// Bytes of one URL to open.
pub const MAX_URL: usize = 8 * 1024;
/// Files in one offer.
pub const MAX_FILES: usize = 256;
/// Bytes of one file name (a basename; Linux's NAME_MAX).
pub const MAX_NAME: usize = 255;
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
    /// Sends and receives files (`FileOffer`, `FileIncoming`, ...).
    pub const FILES: u32 = 4;
    /// Opens URLs it is sent (`HostMessage::OpenUrl`) and forwards `bulkhead-open`.
    pub const OPEN_URL: u32 = 8;
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

/// One file of an offer or an incoming transfer: a basename and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

/// Why a file name is refused. Names are basenames the receiving side creates in its
/// incoming directory, so anything that could leave that directory, hide, or confuse a
/// terminal is refused by both sides (and by the decoder, which cuts the peer off).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name {0:?} is `.` or `..`")]
    Dots(String),
    #[error("the name {0:?} holds a `/`")]
    Slash(String),
    #[error("the name {0:?} holds a NUL or control character")]
    Control(String),
    #[error("the name holds {0} bytes, more than the limit of {MAX_NAME}")]
    TooLong(usize),
}

/// Checks that `name` is a plain basename safe to create under a directory.
pub fn check_file_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.into()));
    }
    if name.contains('/') {
        return Err(NameError::Slash(name.into()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.into()));
    }
    Ok(())
}

/// Why a URL is refused for open-in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("the URL holds {0} bytes, more than the limit of {MAX_URL}")]
    TooLong(usize),
    #[error(
        "the URL holds a space, a control character or a non-ASCII character (percent-encode it)"
    )]
    NotPrintable,
    #[error("only http:// and https:// URLs can be opened in another partition")]
    Scheme,
}

/// Checks that `url` is an `http` or `https` URL of printable ASCII: what a partition may
/// ask another partition's browser to open. Both agents check before sending and the
/// decoder refuses anything else (an agent sending it is broken or hostile).
pub fn check_url(url: &str) -> Result<(), UrlError> {
    if url.len() > MAX_URL {
        return Err(UrlError::TooLong(url.len()));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UrlError::NotPrintable);
    }
    // ASCII from here on, so byte offsets are character offsets.
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(UrlError::Scheme);
    };
    if rest.is_empty() {
        return Err(UrlError::Scheme);
    }
    Ok(())
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
    /// Read `len` (at most [`MAX_PAYLOAD`]) bytes at `offset` of file `index` of the
    /// agent's offer `offer`; answered by `FileData` or `Failed`.
    FileRead {
        id: u32,
        offer: u32,
        index: u32,
        offset: u64,
        len: u32,
    },
    /// Files from partition `source` are coming: prepare `transfer` (a host-chosen
    /// number) under `~/Incoming/<source>/`; answered by `Done` or `Failed`.
    FileIncoming {
        id: u32,
        transfer: u32,
        source: String,
        files: Vec<FileEntry>,
    },
    /// Bytes of file `index` of `transfer` at `offset`; answered by `Done` or `Failed`.
    FileWrite {
        id: u32,
        transfer: u32,
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Every byte of `transfer` was sent: check the sizes, make the files visible under
    /// names that overwrite nothing; answered by `Done` or `Failed`. `abort` discards
    /// the transfer instead.
    FileCommit {
        id: u32,
        transfer: u32,
        abort: bool,
    },
    /// The end of the agent's offer `offer`: `error` is `None` when every file landed
    /// (a move then deletes its sources), else why not, for a person. Not answered.
    FileOutcome {
        offer: u32,
        error: Option<String>,
    },
    /// Open `url` (checked by [`check_url`]) in this partition's browser; answered by
    /// `Done` once the browser was started, or `Failed`.
    OpenUrl {
        id: u32,
        url: String,
    },
    /// The end of the agent's open-in request `request`: `error` is `None` when the URL
    /// was handed to the target's browser, else why not, for a person. Not answered.
    OpenOutcome {
        request: u32,
        error: Option<String>,
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
    /// A user in the guest asks to copy (or move) these files to another partition.
    /// `offer` is the agent's own number, named again by `FileRead` and `FileOutcome`.
    FileOffer {
        offer: u32,
        is_move: bool,
        files: Vec<FileEntry>,
    },
    /// The bytes a `FileRead` asked for (fewer only at the end of the file).
    FileData {
        id: u32,
        data: Vec<u8>,
    },
    /// The request `id` (`FileIncoming`, `FileWrite`, `FileCommit`, `OpenUrl`) succeeded.
    Done {
        id: u32,
    },
    /// A user in the guest asks to open `url` in another partition: `target` names it,
    /// or `None` lets the policy choose (its `@default`). `request` is the agent's own
    /// number, named again by `OpenOutcome`.
    OpenUrl {
        request: u32,
        url: String,
        target: Option<String>,
    },
}

mod kind {
    pub const HOST_HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const CLIPBOARD_GET: u8 = 0x03;
    pub const CLIPBOARD_SET: u8 = 0x04;
    pub const RESTORED: u8 = 0x05;
    pub const FILE_READ: u8 = 0x06;
    pub const FILE_INCOMING: u8 = 0x07;
    pub const FILE_WRITE: u8 = 0x08;
    pub const FILE_COMMIT: u8 = 0x09;
    pub const FILE_OUTCOME: u8 = 0x0a;
    pub const OPEN_URL: u8 = 0x0b;
    pub const OPEN_OUTCOME: u8 = 0x0c;
    pub const AGENT_HELLO: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const CLIPBOARD: u8 = 0x83;
    pub const CLIPBOARD_SET_DONE: u8 = 0x84;
    pub const FAILED: u8 = 0x85;
    pub const FILE_OFFER: u8 = 0x86;
    pub const FILE_DATA: u8 = 0x87;
    pub const DONE: u8 = 0x88;
    pub const OPEN_URL_REQUEST: u8 = 0x89;

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
    #[error("{count} files, more than the limit of {MAX_FILES}")]
    TooManyFiles { count: usize },
    #[error("bad file name: {0}")]
    BadName(NameError),
    #[error("{field} is {value}, neither 0 nor 1")]
    NotBool { field: &'static str, value: u8 },
    #[error("bad URL: {0}")]
    BadUrl(UrlError),
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
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn files(&mut self, files: &[FileEntry]) -> Result<(), EncodeError> {
        if files.len() > MAX_FILES {
            return Err(EncodeError {
                field: "files",
                len: files.len(),
                max: MAX_FILES,
            });
        }
        // files.len() <= MAX_FILES fits u32.
        self.u32(files.len() as u32);
        for f in files {
            self.bytes("file name", f.name.as_bytes(), MAX_NAME)?;
            self.u64(f.size);
        }
        Ok(())
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
    fn optional_text(
        &mut self,
        field: &'static str,
        t: Option<&str>,
        max: usize,
    ) -> Result<(), EncodeError> {
        match t {
            None => self.u8(0),
            Some(t) => {
                self.u8(1);
                self.bytes(field, t.as_bytes(), max)?;
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
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::NotBool { field, value }),
        }
    }
    fn files(&mut self) -> Result<Vec<FileEntry>, DecodeError> {
        let count = usize::try_from(self.u32("file count")?).unwrap_or(usize::MAX);
        if count > MAX_FILES {
            return Err(DecodeError::TooManyFiles { count });
        }
        // Each entry takes at least 12 bytes: the count cannot promise more than is here.
        let mut files = Vec::with_capacity(count.min(self.rest.len() / 12));
        for _ in 0..count {
            let name = self.text("file name", MAX_NAME)?;
            check_file_name(&name).map_err(DecodeError::BadName)?;
            let size = self.u64("file size")?;
            files.push(FileEntry { name, size });
        }
        Ok(files)
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
    fn optional_text(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Option<String>, DecodeError> {
        if self.bool(field)? {
            Ok(Some(self.text(field, max)?))
        } else {
            Ok(None)
        }
    }
    fn url(&mut self) -> Result<String, DecodeError> {
        let url = self.text("url", MAX_URL)?;
        check_url(&url).map_err(DecodeError::BadUrl)?;
        Ok(url)
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
            HostMessage::FileRead {
                id,
                offer,
                index,
                offset,
                len,
            } => {
                if *len as usize > MAX_PAYLOAD {
                    return Err(EncodeError {
                        field: "read length",
                        len: *len as usize,
                        max: MAX_PAYLOAD,
                    });
                }
                let mut w = Writer::new(kind::FILE_READ);
                w.u32(*id);
                w.u32(*offer);
                w.u32(*index);
                w.u64(*offset);
                w.u32(*len);
                w
            }
            HostMessage::FileIncoming {
                id,
                transfer,
                source,
                files,
            } => {
                let mut w = Writer::new(kind::FILE_INCOMING);
                w.u32(*id);
                w.u32(*transfer);
                w.bytes("source", source.as_bytes(), MAX_NAME)?;
                w.files(files)?;
                w
            }
            HostMessage::FileWrite {
                id,
                transfer,
                index,
                offset,
                data,
            } => {
                let mut w = Writer::new(kind::FILE_WRITE);
                w.u32(*id);
                w.u32(*transfer);
                w.u32(*index);
                w.u64(*offset);
                w.bytes("file data", data, MAX_PAYLOAD)?;
                w
            }
            HostMessage::FileCommit {
                id,
                transfer,
                abort,
            } => {
                let mut w = Writer::new(kind::FILE_COMMIT);
                w.u32(*id);
                w.u32(*transfer);
                w.u8(u8::from(*abort));
                w
            }
            HostMessage::FileOutcome { offer, error } => {
                let mut w = Writer::new(kind::FILE_OUTCOME);
                w.u32(*offer);
                w.optional_text("error", error.as_deref(), MAX_TEXT)?;
                w
            }
            HostMessage::OpenUrl { id, url } => {
                let mut w = Writer::new(kind::OPEN_URL);
                w.u32(*id);
                w.bytes("url", url.as_bytes(), MAX_URL)?;
                w
            }
            HostMessage::OpenOutcome { request, error } => {
                let mut w = Writer::new(kind::OPEN_OUTCOME);
                w.u32(*request);
                w.optional_text("error", error.as_deref(), MAX_TEXT)?;
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
            kind::FILE_READ => {
                let id = r.u32("id")?;
                let offer = r.u32("offer")?;
                let index = r.u32("file index")?;
                let offset = r.u64("offset")?;
                let len = r.u32("read length")?;
                if len as usize > MAX_PAYLOAD {
                    return Err(DecodeError::FieldTooLong {
                        field: "read length",
                        len: len as usize,
                        max: MAX_PAYLOAD,
                    });
                }
                HostMessage::FileRead {
                    id,
                    offer,
                    index,
                    offset,
                    len,
                }
            }
            kind::FILE_INCOMING => {
                let id = r.u32("id")?;
                let transfer = r.u32("transfer")?;
                let source = r.text("source", MAX_NAME)?;
                check_file_name(&source).map_err(DecodeError::BadName)?;
                HostMessage::FileIncoming {
                    id,
                    transfer,
                    source,
                    files: r.files()?,
                }
            }
            kind::FILE_WRITE => HostMessage::FileWrite {
                id: r.u32("id")?,
                transfer: r.u32("transfer")?,
                index: r.u32("file index")?,
                offset: r.u64("offset")?,
                data: r.bytes("file data", MAX_PAYLOAD)?.to_vec(),
            },
            kind::FILE_COMMIT => HostMessage::FileCommit {
                id: r.u32("id")?,
                transfer: r.u32("transfer")?,
                abort: r.bool("abort")?,
            },
            kind::FILE_OUTCOME => HostMessage::FileOutcome {
                offer: r.u32("offer")?,
                error: r.optional_text("error", MAX_TEXT)?,
            },
            kind::OPEN_URL => HostMessage::OpenUrl {
                id: r.u32("id")?,
                url: r.url()?,
            },
            kind::OPEN_OUTCOME => HostMessage::OpenOutcome {
                request: r.u32("request")?,
                error: r.optional_text("error", MAX_TEXT)?,
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
            AgentMessage::FileOffer {
                offer,
                is_move,
                files,
            } => {
                let mut w = Writer::new(kind::FILE_OFFER);
                w.u32(*offer);
                w.u8(u8::from(*is_move));
                w.files(files)?;
                w
            }
            AgentMessage::FileData { id, data } => {
                let mut w = Writer::new(kind::FILE_DATA);
                w.u32(*id);
                w.bytes("file data", data, MAX_PAYLOAD)?;
                w
            }
            AgentMessage::Done { id } => {
                let mut w = Writer::new(kind::DONE);
                w.u32(*id);
                w
            }
            AgentMessage::OpenUrl {
                request,
                url,
                target,
            } => {
                let mut w = Writer::new(kind::OPEN_URL_REQUEST);
                w.u32(*request);
                w.bytes("url", url.as_bytes(), MAX_URL)?;
                w.optional_text("target", target.as_deref(), MAX_NAME)?;
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
            kind::FILE_OFFER => AgentMessage::FileOffer {
                offer: r.u32("offer")?,
                is_move: r.bool("move")?,
                files: r.files()?,
            },
            kind::FILE_DATA => AgentMessage::FileData {
                id: r.u32("id")?,
                data: r.bytes("file data", MAX_PAYLOAD)?.to_vec(),
            },
            kind::DONE => AgentMessage::Done { id: r.u32("id")? },
            kind::OPEN_URL_REQUEST => {
                let request = r.u32("request")?;
                let url = r.url()?;
                let target = r.optional_text("target", MAX_NAME)?;
                if let Some(t) = &target {
                    check_file_name(t).map_err(DecodeError::BadName)?;
                }
                AgentMessage::OpenUrl {
                    request,
                    url,
                    target,
                }
            }
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
