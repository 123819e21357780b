//! The X CLIPBOARD selection, read and owned with a pure-Rust X client (x11rb), so the
//! static agent needs no libxcb and no xclip in the template.
//!
//! Reading: ask the owner for `TARGETS`, then `image/png` if offered, else `UTF8_STRING`;
//! large answers arrive by the INCR protocol. Owning: keep the content, answer
//! `SelectionRequest`s for `TARGETS`, the text targets or `image/png`, until another
//! client takes the selection.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bulkhead_agent_proto::{Clipboard as Content, MAX_PAYLOAD, PNG_SIGNATURE};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, PropMode, Property,
    SelectionNotifyEvent, SelectionRequestEvent, Window, WindowClass, SELECTION_NOTIFY_EVENT,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::{COPY_DEPTH_FROM_PARENT, CURRENT_TIME, NONE};

/// How long the selection's owner has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot reach the X display {display}: {detail}")]
    Connect { display: String, detail: String },
    #[error("X: {0}")]
    X(String),
    #[error("the clipboard owner did not answer within {ANSWER_TIMEOUT:?}")]
    Timeout,
    #[error("the clipboard holds more than {MAX_PAYLOAD} bytes")]
    TooLarge,
    #[error("the clipboard text is not UTF-8")]
    NotUtf8,
}

fn x<E: std::fmt::Display>(e: E) -> ClipError {
    ClipError::X(e.to_string())
}

struct Atoms {
    clipboard: Atom,
    targets: Atom,
    utf8: Atom,
    text: Atom,
    png: Atom,
    incr: Atom,
    property: Atom,
}

struct Session {
    conn: RustConnection,
    window: Window,
    atoms: Atoms,
    /// What we own the selection with, if we do.
    owned: Option<Content>,
}

/// The agent's view of the display; connects on first use and again after X restarts.
pub struct Clipboard {
    display: String,
    session: Option<Session>,
}

impl Clipboard {
    pub fn new(display: String) -> Self {
        Clipboard {
            display,
            session: None,
        }
    }

    /// The X connection's fd while connected, for the agent's poll.
    pub fn fd(&self) -> Option<i32> {
        self.session.as_ref().map(|s| s.conn.stream().as_raw_fd())
    }

    fn session(&mut self) -> Result<&mut Session, ClipError> {
        if self.session.is_none() {
            self.session = Some(Session::connect(&self.display)?);
        }
        self.session
            .as_mut()
            .ok_or_else(|| ClipError::X("no session".into()))
    }

    /// Answers the selection requests that arrived; drops the session if X went away.
    pub fn serve_pending(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        loop {
            match s.conn.poll_for_event() {
                Ok(Some(e)) => s.dispatch(e),
                Ok(None) => return,
                Err(_) => {
                    self.session = None;
                    return;
                }
            }
        }
    }

    /// Serves selection requests until `d` passes or another client takes CLIPBOARD.
    pub fn serve_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            let Some(fd) = self.fd() else { return };
            if self.session.as_ref().is_some_and(|s| s.owned.is_none()) {
                return;
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            unsafe { libc::poll(&mut p, 1, 200) };
            self.serve_pending();
        }
    }

    pub fn get(&mut self) -> Result<Option<Content>, ClipError> {
        let r = self.session().and_then(Session::get);
        if matches!(r, Err(ClipError::X(_))) {
            self.session = None;
        }
        r
    }

    pub fn set(&mut self, content: Content) -> Result<(), ClipError> {
        let r = self.session().and_then(|s| s.set(content));
        if matches!(r, Err(ClipError::X(_))) {
            self.session = None;
        }
        r
    }
}

impl Session {
    fn connect(display: &str) -> Result<Session, ClipError> {
        let (conn, screen) =
            RustConnection::connect(Some(display)).map_err(|e| ClipError::Connect {
                display: display.to_string(),
                detail: e.to_string(),
            })?;
        let root = conn
            .setup()
            .roots
            .get(screen)
            .ok_or_else(|| ClipError::X(format!("no screen {screen}")))?
            .root;
        let window = conn.generate_id().map_err(x)?;
        conn.create_window(
            COPY_DEPTH_FROM_PARENT,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )
        .map_err(x)?;
        let atom = |name: &[u8]| -> Result<Atom, ClipError> {
            Ok(conn
                .intern_atom(false, name)
                .map_err(x)?
                .reply()
                .map_err(x)?
                .atom)
        };
        let atoms = Atoms {
            clipboard: atom(b"CLIPBOARD")?,
            targets: atom(b"TARGETS")?,
            utf8: atom(b"UTF8_STRING")?,
            text: atom(b"TEXT")?,
            png: atom(b"image/png")?,
            incr: atom(b"INCR")?,
            property: atom(b"BULKHEAD_CLIPBOARD")?,
        };
        conn.flush().map_err(x)?;
        Ok(Session {
            conn,
            window,
            atoms,
            owned: None,
        })
    }

    fn get(&mut self) -> Result<Option<Content>, ClipError> {
        let owner = self
            .conn
            .get_selection_owner(self.atoms.clipboard)
            .map_err(x)?
            .reply()
            .map_err(x)?
            .owner;
        if owner == NONE {
            return Ok(None);
        }
        if owner == self.window {
            return Ok(self.owned.clone());
        }
        let targets = self.convert(self.atoms.targets)?.unwrap_or_default();
        let offered: Vec<Atom> = targets
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if offered.contains(&self.atoms.png) {
            if let Some(png) = self.convert(self.atoms.png)? {
                if png.starts_with(&PNG_SIGNATURE) {
                    return Ok(Some(Content::Png(png)));
                }
            }
        }
        let target = if offered.is_empty() || offered.contains(&self.atoms.utf8) {
            self.atoms.utf8
        } else {
            AtomEnum::STRING.into()
        };
        match self.convert(target)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(|t| Some(Content::Text(t)))
                .map_err(|_| ClipError::NotUtf8),
            None => Ok(None),
        }
    }

    /// Asks the owner for `target`; `None` when it refuses.
    fn convert(&mut self, target: Atom) -> Result<Option<Vec<u8>>, ClipError> {
        let prop = self.atoms.property;
        self.conn.delete_property(self.window, prop).map_err(x)?;
        self.conn
            .convert_selection(
                self.window,
                self.atoms.clipboard,
                target,
                prop,
                CURRENT_TIME,
            )
            .map_err(x)?;
        self.conn.flush().map_err(x)?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.wait_event(deadline)? {
                Event::SelectionNotify(n) if n.requestor == self.window => {
                    if n.property == NONE {
                        return Ok(None);
                    }
                    return self.read_property(deadline).map(Some);
                }
                other => self.dispatch(other),
            }
        }
    }

    /// Reads (and deletes) our property, following INCR if the owner uses it.
    fn read_property(&mut self, deadline: Instant) -> Result<Vec<u8>, ClipError> {
        let reply = self
            .conn
            .get_property(
                true,
                self.window,
                self.atoms.property,
                AtomEnum::ANY,
                0,
                (MAX_PAYLOAD / 4 + 1) as u32,
            )
            .map_err(x)?
            .reply()
            .map_err(x)?;
        if reply.bytes_after > 0 {
            return Err(ClipError::TooLarge);
        }
        if reply.type_ != self.atoms.incr {
            self.conn.flush().map_err(x)?;
            return Ok(reply.value);
        }
        // INCR: the owner writes chunks, each after we delete the previous one; an
        // empty chunk ends the transfer.
        self.conn.flush().map_err(x)?;
        let mut data = Vec::new();
        loop {
            match self.wait_event(deadline)? {
                Event::PropertyNotify(p)
                    if p.window == self.window
                        && p.atom == self.atoms.property
                        && p.state == Property::NEW_VALUE =>
                {
                    let chunk = self
                        .conn
                        .get_property(
                            true,
                            self.window,
                            self.atoms.property,
                            AtomEnum::ANY,
                            0,
                            (MAX_PAYLOAD / 4 + 1) as u32,
                        )
                        .map_err(x)?
                        .reply()
                        .map_err(x)?;
                    self.conn.flush().map_err(x)?;
                    if chunk.value.is_empty() {
                        return Ok(data);
                    }
                    if data.len() + chunk.value.len() > MAX_PAYLOAD || chunk.bytes_after > 0 {
                        return Err(ClipError::TooLarge);
                    }
                    data.extend_from_slice(&chunk.value);
                }
                other => self.dispatch(other),
            }
        }
    }

    fn wait_event(&mut self, deadline: Instant) -> Result<Event, ClipError> {
        loop {
            if let Some(e) = self.conn.poll_for_event().map_err(x)? {
                return Ok(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClipError::Timeout);
            }
            let mut fd = libc::pollfd {
                fd: self.conn.stream().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(1000) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut fd, 1, ms) };
        }
    }

    fn set(&mut self, content: Content) -> Result<(), ClipError> {
        if content.len() > MAX_PAYLOAD {
            return Err(ClipError::TooLarge);
        }
        self.conn
            .set_selection_owner(self.window, self.atoms.clipboard, CURRENT_TIME)
            .map_err(x)?;
        let owner = self
            .conn
            .get_selection_owner(self.atoms.clipboard)
            .map_err(x)?
            .reply()
            .map_err(x)?
            .owner;
        if owner != self.window {
            return Err(ClipError::X("another client kept the CLIPBOARD".into()));
        }
        self.owned = Some(content);
        Ok(())
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::SelectionRequest(req) => {
                // A requestor that vanished makes these fail; nothing to do about it.
                let _ = self.answer(&req);
                let _ = self.conn.flush();
            }
            Event::SelectionClear(c) if c.selection == self.atoms.clipboard => {
                self.owned = None;
            }
            _ => {}
        }
    }

    fn answer(&mut self, req: &SelectionRequestEvent) -> Result<(), ClipError> {
        let a = &self.atoms;
        let property = if req.property == NONE {
            req.target // obsolete clients
        } else {
            req.property
        };
        let served = match (&self.owned, req.selection == a.clipboard) {
            (Some(content), true) => {
                let targets: Vec<Atom> = match content {
                    Content::Text(_) => vec![a.targets, a.utf8, a.text, AtomEnum::STRING.into()],
                    Content::Png(_) => vec![a.targets, a.png],
                };
                if req.target == a.targets {
                    self.conn
                        .change_property32(
                            PropMode::REPLACE,
                            req.requestor,
                            property,
                            AtomEnum::ATOM,
                            &targets,
                        )
                        .map_err(x)?;
                    true
                } else if targets.contains(&req.target) {
                    let bytes = match content {
                        Content::Text(t) => t.as_bytes(),
                        Content::Png(p) => p.as_slice(),
                    };
                    self.conn
                        .change_property8(
                            PropMode::REPLACE,
                            req.requestor,
                            property,
                            req.target,
                            bytes,
                        )
                        .map_err(x)?;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        let notify = SelectionNotifyEvent {
            response_type: SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: req.time,
            requestor: req.requestor,
            selection: req.selection,
            target: req.target,
            property: if served { property } else { NONE },
        };
        self.conn
            .send_event(false, req.requestor, EventMask::NO_EVENT, notify)
            .map_err(x)?;
        Ok(())
    }
}
