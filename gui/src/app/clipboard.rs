//! The secure clipboard (the Qubes gesture). Ctrl+Shift+C in the focused partition asks
//! its guest agent for the X CLIPBOARD and keeps it in the host's one-slot buffer;
//! Ctrl+Shift+V in a partition asks the policy (`bulkhead.ClipboardPaste` from the
//! source to that partition) and, if allowed, hands the buffer to its agent, which owns
//! the CLIPBOARD with it; the buffer is emptied by that one paste. Both decisions are
//! the policy engine's, with the policy as saved on disk at that moment (an edit saved in
//! the editor applies to the next gesture), and both go to the audit log. A paste the
//! policy answers with `ask` becomes an [`AskRequest`] for the host's ask dialog; the
//! person's answer comes back through [`SecureClipboard::answer_ask`], is decided again
//! with the policy saved at that moment and audited as what it was ("asked → allowed by
//! the user"). The guest never sees the gesture keys (the router takes them) and never
//! learns of a refusal.

use std::path::{Path, PathBuf};

use isolation_policy::{service, AuditLog, Decision, Policy, Request, RuleRef, Verdict};

use super::backend::{AgentReply, AgentRequest, Clipboard};
use super::panels::ask_dialog::{AskAnswer, AskOwner, AskRequest};
use super::PartitionSlot;
use crate::input::router::ClipboardGesture;

/// The buffer's default cap; the agent protocol carries at most this much in one
/// message ([`bulkhead_supervisor::agent::MAX_PAYLOAD`]), so a larger setting is clamped.
/// The policy's `[clipboard] max_bytes` (in `partitions.toml`) sets it.
pub const DEFAULT_MAX_BYTES: usize = isolation_policy::CLIPBOARD_MAX_BYTES_LIMIT;
/// Environment variable that overrides the policy's cap, in bytes (for tests and
/// one-off runs; the setting belongs in `partitions.toml`).
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
    /// `clipboard`, or for the other services `files`, `open`.
    pub topic: &'static str,
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

/// A paste waiting for the person's answer.
#[derive(Debug)]
struct Asking {
    continuation: u64,
    source: String,
    target: String,
    /// The rule that asked and the engine's explanation, for the audit record.
    rule: Option<RuleRef>,
    explanation: String,
}

pub struct SecureClipboard {
    held: Option<Held>,
    pending: Vec<Pending>,
    asking: Vec<Asking>,
    next_continuation: u64,
    /// Set: this cap instead of the policy's (`BULKHEAD_CLIPBOARD_MAX_BYTES`).
    max_bytes_override: Option<usize>,
    policy_dir: Option<PathBuf>,
    last_good: Option<Policy>,
    audit: Option<AuditLog>,
    /// The last step, whichever partition it was in.
    pub status: Option<ClipboardStatus>,
    /// Every status line since the app last took them ([`SecureClipboard::take_events`]),
    /// for the partitions' own status lines.
    events: Vec<ClipboardStatus>,
    /// Questions for the ask dialog; the app takes them after each gesture.
    pub asks: Vec<AskRequest>,
    /// Set when a decision was audited; the app reloads the audit panel and clears it.
    pub audited: bool,
}

impl Default for SecureClipboard {
    /// No policy: every copy and paste is refused (nothing is allowed without one).
    fn default() -> Self {
        SecureClipboard::new(None, None)
    }
}

fn describe(content: &Clipboard) -> String {
    match content {
        Clipboard::Text(t) => format!("{} bytes", t.len()),
        Clipboard::Png(p) => format!("{} bytes (PNG image)", p.len()),
    }
}

impl SecureClipboard {
    /// Decides with the policy in `policy_dir` (read at every gesture, its `[clipboard]
    /// max_bytes` included) and audits into `audit_dir`.
    pub fn new(policy_dir: Option<PathBuf>, audit_dir: Option<&Path>) -> Self {
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
            asking: Vec::new(),
            next_continuation: 1,
            max_bytes_override: None,
            policy_dir,
            last_good: None,
            audit,
            status: None,
            events: Vec::new(),
            asks: Vec::new(),
            audited: false,
        }
    }

    /// Caps the buffer at `max_bytes` whatever the policy says (clamped to what the agent
    /// protocol carries).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes_override = Some(max_bytes.min(bulkhead_supervisor::agent::MAX_PAYLOAD));
        self
    }

    /// The override in [`MAX_BYTES_ENV`], if set; a value that is not a number of bytes
    /// is ignored with a warning (the policy's cap applies).
    pub fn max_bytes_from_env() -> Option<usize> {
        let v = std::env::var(MAX_BYTES_ENV).ok()?;
        match v.trim().parse() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "{MAX_BYTES_ENV}={v:?} is not a number of bytes ({e}); the policy's [clipboard] max_bytes applies"
                );
                None
            }
        }
    }

    /// The cap now: the override, else the last good policy's `[clipboard] max_bytes`.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes_override
            .unwrap_or_else(|| {
                self.last_good
                    .as_ref()
                    .map_or(DEFAULT_MAX_BYTES, |p| p.settings().clipboard_max_bytes)
            })
            .min(bulkhead_supervisor::agent::MAX_PAYLOAD)
    }

    /// Decide with the policy in `dir` from now on (the editor saved the defaults into
    /// the user's directory).
    pub fn set_policy_dir(&mut self, dir: PathBuf) {
        self.policy_dir = Some(dir);
    }

    /// The status lines since the last call, oldest first, each for its partition.
    /// No agent answer is awaited (no request names a slot by index).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn take_events(&mut self) -> Vec<ClipboardStatus> {
        std::mem::take(&mut self.events)
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
        let status = ClipboardStatus {
            partition: partition.to_string(),
            topic: "clipboard",
            kind,
            text,
        };
        self.events.push(status.clone());
        self.status = Some(status);
    }

    /// Reads the policy as saved now into `last_good`; a broken file keeps the last good
    /// one and returns the note saying so.
    fn reload_policy(&mut self) -> Option<String> {
        let dir = self.policy_dir.as_ref()?;
        match Policy::load(dir) {
            Ok((policy, _)) => {
                self.last_good = Some(policy);
                None
            }
            Err(e) => Some(format!(
                "(the saved policy does not load: {e}; using the last good one) "
            )),
        }
    }

    fn record(&mut self, request: &Request, decision: &Decision) {
        if let Some(log) = &self.audit {
            match log.record(request, decision) {
                Ok(()) => self.audited = true,
                Err(e) => tracing::warn!("audit: {e}"),
            }
        }
    }

    /// The policy as saved now; a broken file keeps the last good one (and says so in
    /// the decision's explanation), none at all refuses.
    fn decide(&mut self, request: &Request) -> Decision {
        let note = self.reload_policy();
        let mut decision = match &self.last_good {
            Some(policy) => policy.decide(request),
            None => no_policy_decision(),
        };
        if let Some(note) = note {
            decision.explanation.insert_str(0, &note);
        }
        self.record(request, &decision);
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
            Verdict::Ask { default_target } => {
                return self.ask(&source, target, default_target.clone(), decision.clone());
            }
        };
        if let Some(text) = refusal {
            return self.say(target, StatusKind::Refused, text);
        }
        self.send_paste(slot, i, &source, target);
    }

    /// Hands the question to the ask dialog. A paste goes only where it was made, so
    /// that partition is the one target offered.
    fn ask(
        &mut self,
        source: &str,
        target: &str,
        default_target: Option<String>,
        decision: Decision,
    ) {
        let continuation = self.next_continuation;
        self.next_continuation += 1;
        let rule = decision.rule.as_ref().map_or_else(
            || "(no rule)".into(),
            |r| format!("{}:{}", r.file.display(), r.line),
        );
        self.asks.push(AskRequest {
            owner: AskOwner::Clipboard,
            continuation,
            service: service::CLIPBOARD_PASTE.into(),
            argument: None,
            source: source.to_string(),
            targets: vec![target.to_string()],
            default_target,
            rule: rule.clone(),
        });
        self.asking.push(Asking {
            continuation,
            source: source.to_string(),
            target: target.to_string(),
            rule: decision.rule,
            explanation: decision.explanation,
        });
        self.say(
            target,
            StatusKind::Waiting,
            format!("paste from [{source}] into [{target}]: waiting for your answer (rule {rule})"),
        );
    }

    /// The person answered the ask dialog for `continuation`. Allow: decided again with
    /// the policy saved now (it may have changed while the dialog was open), audited as
    /// asked and allowed by the user, and the paste proceeds exactly as for an allow.
    /// Deny: audited and refused on the status line.
    pub fn answer_ask(
        &mut self,
        slots: &mut [PartitionSlot],
        continuation: u64,
        answer: &AskAnswer,
    ) {
        let Some(at) = self
            .asking
            .iter()
            .position(|a| a.continuation == continuation)
        else {
            return;
        };
        let asked = self.asking.remove(at);
        let (source, target) = (asked.source.clone(), asked.target.clone());
        let chosen = match answer {
            AskAnswer::Allow { target: chosen } => chosen.clone(),
            AskAnswer::Deny => {
                let decision = Decision {
                    verdict: Verdict::Deny { notify: false },
                    rule: asked.rule,
                    explanation: format!("asked → denied by the user ({})", asked.explanation),
                    chain: Vec::new(),
                };
                self.record(&Request::clipboard_paste(&source, &target), &decision);
                let text = format!("paste from [{source}] into [{target}] refused: you denied it");
                return self.say(&target, StatusKind::Refused, text);
            }
        };
        let request = Request::clipboard_paste(&source, &chosen);
        let note = self.reload_policy();
        let mut decision = match &self.last_good {
            Some(policy) => {
                let d = policy.decide(&request);
                if d.verdict.is_ask() {
                    Decision {
                        verdict: Verdict::Allow {
                            target: Some(chosen.clone()),
                        },
                        explanation: format!("asked → allowed by the user ({})", d.explanation),
                        ..d
                    }
                } else {
                    d
                }
            }
            None => no_policy_decision(),
        };
        if let Some(note) = note {
            decision.explanation.insert_str(0, &note);
        }
        self.record(&request, &decision);
        let refusal = match &decision.verdict {
            _ if chosen != target => Some(format!(
                "paste from [{source}] into [{chosen}] refused: a paste goes only where it was made ([{target}])"
            )),
            Verdict::Allow { target: Some(t) } if *t != target => Some(format!(
                "paste from [{source}] into [{target}] refused: the policy now redirects it to [{t}]"
            )),
            Verdict::Allow { .. } => None,
            _ => Some(format!(
                "paste from [{source}] into [{target}] refused: {}",
                decision.explanation
            )),
        };
        if let Some(text) = refusal {
            return self.say(&target, StatusKind::Refused, text);
        }
        if self.held.as_ref().map(|h| h.source.as_str()) != Some(source.as_str()) {
            let text = format!(
                "paste into [{target}] not done: the buffer changed while you were asked; paste again"
            );
            return self.say(&target, StatusKind::Refused, text);
        }
        let Some(i) = slots.iter().position(|s| s.backend.info().name == target) else {
            let text = format!("paste into [{target}] not done: the partition is gone");
            return self.say(&target, StatusKind::Refused, text);
        };
        let slot = &mut slots[i];
        self.send_paste(slot, i, &source, &target);
    }

    /// An allowed paste: the buffer goes to the target's agent, once.
    fn send_paste(&mut self, slot: &mut PartitionSlot, i: usize, source: &str, target: &str) {
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
                    source: source.to_string(),
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
                    Some(c) if c.len() > self.max_bytes() => {
                        let text = format!(
                            "the clipboard of [{source}] holds {} bytes, more than the {}-byte cap; nothing copied",
                            c.len(),
                            self.max_bytes()
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
    r.id()
}

/// What every request gets while no policy has ever loaded: a visible refusal.
fn no_policy_decision() -> Decision {
    Decision {
        verdict: Verdict::Deny { notify: true },
        rule: None,
        explanation: "denied: no policy is loaded".into(),
        chain: Vec::new(),
    }
}
