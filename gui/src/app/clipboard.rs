//! The secure clipboard (the Qubes gesture). Ctrl+Shift+C in the focused partition asks
//! its guest agent for the X CLIPBOARD and keeps it in the host's one-slot buffer;
//! Ctrl+Shift+V in a partition asks the policy (`bulkhead.ClipboardPaste` from the
//! source to that partition) and, if allowed, hands the buffer to its agent, which owns
//! the CLIPBOARD with it; the buffer is emptied by that one paste. Both decisions are
//! the policy engine's, with the policy as saved on disk at that moment (an edit saved in
//! the editor applies to the next gesture), and both go to the audit log. The guest
//! never sees the gesture keys (the router takes them) and never learns of a refusal.

use std::path::{Path, PathBuf};

use isolation_policy::{AuditLog, Decision, Policy, Request, Verdict};

use super::backend::{AgentReply, AgentRequest, Clipboard};
use super::PartitionSlot;
use crate::input::router::ClipboardGesture;

/// The buffer's default cap; the agent protocol carries at most this much in one
/// message ([`bulkhead_supervisor::agent::MAX_PAYLOAD`]), so a larger setting is clamped.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Environment variable that sets the cap in bytes.
pub const MAX_BYTES_ENV: &str = "BULKHEAD_CLIPBOARD_MAX_BYTES";

/// How the last clipboard step ended, for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// Asked the agent; its answer is pending.
    Waiting,
    Done,
    /// Refused by policy or a cap, or failed: nothing crossed.
    Refused,
}

/// One line for the person: which partition, what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipboardStatus {
    pub partition: String,
    pub kind: StatusKind,
    pub text: String,
}

#[derive(Debug)]
struct Held {
    source: String,
    content: Clipboard,
}

#[derive(Debug)]
enum Pending {
    Copy {
        slot: usize,
        id: u32,
        source: String,
    },
    Paste {
        slot: usize,
        id: u32,
        source: String,
        target: String,
        bytes: usize,
    },
}

pub struct SecureClipboard {
    held: Option<Held>,
    pending: Vec<Pending>,
    max_bytes: usize,
    policy_dir: Option<PathBuf>,
    last_good: Option<Policy>,
    audit: Option<AuditLog>,
    pub status: Option<ClipboardStatus>,
    /// Set when a decision was audited; the app reloads the audit panel and clears it.
    pub audited: bool,
}

impl Default for SecureClipboard {
    /// No policy: every copy and paste is refused (nothing is allowed without one).
    fn default() -> Self {
        SecureClipboard::new(None, None, DEFAULT_MAX_BYTES)
    }
}

fn describe(content: &Clipboard) -> String {
    match content {
        Clipboard::Text(t) => format!("{} bytes", t.len()),
        Clipboard::Png(p) => format!("{} bytes (PNG image)", p.len()),
    }
}

impl SecureClipboard {
    /// Decides with the policy in `policy_dir` (read at every gesture) and audits into
    /// `audit_dir`; `max_bytes` is clamped to what the agent protocol carries.
    pub fn new(policy_dir: Option<PathBuf>, audit_dir: Option<&Path>, max_bytes: usize) -> Self {
        let audit = audit_dir.and_then(|d| {
            AuditLog::open(
                d,
                isolation_policy::audit::DEFAULT_MAX_BYTES,
                isolation_policy::audit::DEFAULT_KEEP,
            )
            .map_err(|e| tracing::warn!("clipboard decisions will not be audited: {e}"))
            .ok()
        });
        SecureClipboard {
            held: None,
            pending: Vec::new(),
            max_bytes: max_bytes.min(bulkhead_supervisor::agent::MAX_PAYLOAD),
            policy_dir,
            last_good: None,
            audit,
            status: None,
            audited: false,
        }
    }

    /// The cap from [`MAX_BYTES_ENV`], else [`DEFAULT_MAX_BYTES`].
    pub fn max_bytes_from_env() -> usize {
        std::env::var(MAX_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_BYTES)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Where the buffer's content came from and its size, if it holds any.
    pub fn held(&self) -> Option<(&str, usize)> {
        self.held
            .as_ref()
            .map(|h| (h.source.as_str(), h.content.len()))
    }

    fn say(&mut self, partition: &str, kind: StatusKind, text: String) {
        match kind {
            StatusKind::Refused => tracing::info!(partition, "clipboard: {text}"),
            _ => tracing::debug!(partition, "clipboard: {text}"),
        }
        self.status = Some(ClipboardStatus {
            partition: partition.to_string(),
            kind,
            text,
        });
    }

    /// The policy as saved now; a broken file keeps the last good one (and says so in
    /// the decision's explanation), none at all refuses.
    fn decide(&mut self, request: &Request) -> Decision {
        let mut note = None;
        if let Some(dir) = &self.policy_dir {
            match Policy::load(dir) {
                Ok((policy, _)) => self.last_good = Some(policy),
                Err(e) => {
                    note = Some(format!(
                        "(the saved policy does not load: {e}; using the last good one) "
                    ))
                }
            }
        }
        let mut decision = match &self.last_good {
            Some(policy) => policy.decide(request),
            None => Decision {
                verdict: Verdict::Deny { notify: true },
                rule: None,
                explanation: "denied: no policy is loaded".into(),
                chain: Vec::new(),
            },
        };
        if let Some(note) = note {
            decision.explanation.insert_str(0, &note);
        }
        if let Some(log) = &self.audit {
            match log.record(request, &decision) {
                Ok(()) => self.audited = true,
                Err(e) => tracing::warn!("audit: {e}"),
            }
        }
        decision
    }

    /// Carries out a gesture in slot `i` (the focused partition).
    pub fn gesture(&mut self, slots: &mut [PartitionSlot], i: usize, g: ClipboardGesture) {
        let Some(slot) = slots.get_mut(i) else { return };
        let name = slot.backend.info().name.clone();
        match g {
            ClipboardGesture::Copy => self.copy(slot, i, &name),
            ClipboardGesture::Paste => self.paste(slot, i, &name),
        }
    }

    fn copy(&mut self, slot: &mut PartitionSlot, i: usize, source: &str) {
        let decision = self.decide(&Request::clipboard_copy(source));
        if !decision.verdict.is_allow() {
            let text = format!("copy from [{source}] refused: {}", decision.explanation);
            return self.say(source, StatusKind::Refused, text);
        }
        match slot.backend.agent_request(AgentRequest::ClipboardGet) {
            Ok(id) => {
                self.pending.push(Pending::Copy {
                    slot: i,
                    id,
                    source: source.to_string(),
                });
                self.say(
                    source,
                    StatusKind::Waiting,
                    format!("copying from [{source}]…"),
                );
            }
            Err(e) => self.say(
                source,
                StatusKind::Refused,
                format!("copy from [{source}] failed: {e}"),
            ),
        }
    }

    fn paste(&mut self, slot: &mut PartitionSlot, i: usize, target: &str) {
        let Some(source) = self.held.as_ref().map(|h| h.source.clone()) else {
            let text = format!(
                "nothing to paste into [{target}]: copy first with {}",
                crate::input::router::COPY_SHORTCUT_TEXT
            );
            return self.say(target, StatusKind::Refused, text);
        };
        let decision = self.decide(&Request::clipboard_paste(&source, target));
        let refusal = match &decision.verdict {
            Verdict::Allow { target: Some(t) } if t != target => Some(format!(
                "paste from [{source}] into [{target}] refused: the policy redirects it to [{t}], \
                 and a paste goes only where it was made"
            )),
            Verdict::Allow { .. } => None,
            Verdict::Deny { .. } => Some(format!(
                "paste from [{source}] into [{target}] refused: {}",
                decision.explanation
            )),
            Verdict::Ask { .. } => Some(format!(
                "paste from [{source}] into [{target}] needs confirmation (not yet supported), \
                 so it was not done: {}",
                decision.explanation
            )),
        };
        if let Some(text) = refusal {
            return self.say(target, StatusKind::Refused, text);
        }
        let Some(held) = self.held.take() else { return };
        let bytes = held.content.len();
        let what = describe(&held.content);
        match slot
            .backend
            .agent_request(AgentRequest::ClipboardSet(held.content.clone()))
        {
            Ok(id) => {
                // Sent once: the buffer is empty from here on, whatever the agent says.
                self.pending.push(Pending::Paste {
                    slot: i,
                    id,
                    source: source.clone(),
                    target: target.to_string(),
                    bytes,
                });
                self.say(
                    target,
                    StatusKind::Waiting,
                    format!("pasting {what} from [{source}] into [{target}]…"),
                );
            }
            Err(e) => {
                // Nothing crossed: the buffer stays for another try.
                self.held = Some(held);
                self.say(
                    target,
                    StatusKind::Refused,
                    format!("paste into [{target}] failed: {e}"),
                );
            }
        }
    }

    /// Takes the agents' answers (call once per frame, after the backends polled).
    pub fn poll(&mut self, slots: &mut [PartitionSlot]) {
        if self.pending.is_empty() {
            return;
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            if !self.pending.iter().any(|p| p.slot() == i) {
                continue;
            }
            for reply in slot.backend.take_agent_replies() {
                let Some(at) = self
                    .pending
                    .iter()
                    .position(|p| p.slot() == i && p.id() == reply_id(&reply))
                else {
                    continue;
                };
                let pending = self.pending.remove(at);
                self.answer(pending, reply);
            }
        }
    }

    fn answer(&mut self, pending: Pending, reply: AgentReply) {
        match (pending, reply) {
            (Pending::Copy { source, .. }, AgentReply::Clipboard { content, .. }) => {
                match content {
                    None => self.say(
                        &source,
                        StatusKind::Refused,
                        format!("the clipboard of [{source}] is empty; nothing copied"),
                    ),
                    Some(c) if c.len() > self.max_bytes => {
                        let text = format!(
                            "the clipboard of [{source}] holds {} bytes, more than the {}-byte cap; nothing copied",
                            c.len(),
                            self.max_bytes
                        );
                        self.say(&source, StatusKind::Refused, text)
                    }
                    Some(c) => {
                        let text = format!("copied {} from [{source}]", describe(&c));
                        self.held = Some(Held {
                            source: source.clone(),
                            content: c,
                        });
                        self.say(&source, StatusKind::Done, text)
                    }
                }
            }
            (
                Pending::Paste {
                    source,
                    target,
                    bytes,
                    ..
                },
                AgentReply::ClipboardSet { .. },
            ) => self.say(
                &target,
                StatusKind::Done,
                format!(
                    "pasted {bytes} bytes from [{source}] into [{target}]; the buffer is empty"
                ),
            ),
            (Pending::Copy { source, .. }, AgentReply::Failed { reason, .. }) => self.say(
                &source,
                StatusKind::Refused,
                format!("copy from [{source}] failed: {reason}"),
            ),
            (Pending::Paste { target, .. }, AgentReply::Failed { reason, .. }) => self.say(
                &target,
                StatusKind::Refused,
                format!("paste into [{target}] failed: {reason}"),
            ),
            // The supervisor pairs each answer with its request's kind; anything else is
            // not ours to act on.
            (p, r) => tracing::warn!("clipboard: unexpected answer {r:?} to {p:?}"),
        }
    }
}

impl Pending {
    fn slot(&self) -> usize {
        match self {
            Pending::Copy { slot, .. } | Pending::Paste { slot, .. } => *slot,
        }
    }
    fn id(&self) -> u32 {
        match self {
            Pending::Copy { id, .. } | Pending::Paste { id, .. } => *id,
        }
    }
}

fn reply_id(r: &AgentReply) -> u32 {
    match r {
        AgentReply::Pong { id }
        | AgentReply::Clipboard { id, .. }
        | AgentReply::ClipboardSet { id }
        | AgentReply::Failed { id, .. } => *id,
    }
}
