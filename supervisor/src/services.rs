//! The policy at run time for what a partition's user asks of other partitions through
//! the guest agent (the Qubes qrexec role): `bulkhead-copy` / `bulkhead-move`
//! (`bulkhead.FileCopy`) and `bulkhead-open` (`bulkhead.OpenURL`, `@default` when no
//! target is named). [`ServiceBroker::poll`] takes every running partition's offers,
//! decides each with the policy as saved on disk at that moment (an edit applies to the
//! next request; a file that no longer loads keeps the last good policy and says so),
//! writes each decision to the audit log and returns what the person must see or answer:
//! a [`Question`] for the host's ask dialog (a file copy always asks where to, offering
//! only targets the policy allows or asks about), status lines, a disposable it started.
//! [`ServiceBroker::answer`] carries out the person's choice after deciding it again.
//! No UI here: the app draws the questions; headless runs answer them with
//! [`ServiceBroker::answer_unattended`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolation_policy::{service, AuditLog, Decision, Policy, Request, Verdict};

use crate::agent::{AgentOffer, AgentReply, AgentRequest, AgentStatus, FileEntry, OfferOutcome};
use crate::transfer::{Transfer, TransferPlan, TransferProgress, TransferState};
use crate::{ProcessState, Supervisor};

/// How long an open-in waits for its target's agent (a cold boot included).
pub const OPEN_WAIT: Duration = Duration::from_secs(300);
/// Unanswered questions are refused after this long (the guest's command is waiting).
pub const QUESTION_WAIT: Duration = Duration::from_secs(600);

/// Something the person must decide: shown by the host's ask dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u64,
    pub service: String,
    /// What is asked, for a person: the files and their size, or the URL.
    pub argument: String,
    pub source: String,
    /// Only targets the policy allows or asks about, in policy order.
    pub targets: Vec<String>,
    pub default_target: Option<String>,
    /// `file:line` of the rule that asked, if one did.
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Waiting,
    Done,
    Refused,
}

/// What the broker reports after a poll or an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    Ask(Question),
    /// One line for `partition`'s status; `topic` is `files` or `open`.
    Status {
        partition: String,
        topic: &'static str,
        kind: StatusKind,
        text: String,
    },
    /// A disposable was started for an open-in: the app shows it.
    DisposableStarted {
        name: String,
        of: String,
        restored: bool,
    },
    /// A decision was written to the audit log.
    Audited,
}

enum Waiting {
    Files {
        offer: u32,
        is_move: bool,
        files: Vec<FileEntry>,
    },
    Open {
        request: u32,
        url: String,
        /// What the guest named (`None`: `@default`), for deciding the answer again.
        named: Option<String>,
    },
}

struct Asked {
    question: Question,
    what: Waiting,
    since: Instant,
}

struct RunningTransfer {
    transfer: Transfer,
    what: String,
}

struct PendingOpen {
    source: String,
    request: u32,
    url: String,
    target: String,
    deadline: Instant,
    sent: Option<u32>,
}

pub struct ServiceBroker {
    policy_dir: Option<PathBuf>,
    last_good: Option<Policy>,
    audit: Option<AuditLog>,
    engine: crate::launch::Engine,
    next_question: u64,
    asked: Vec<Asked>,
    transfers: Vec<RunningTransfer>,
    opens: Vec<PendingOpen>,
    events: Vec<ServiceEvent>,
}

impl ServiceBroker {
    /// Decides with the policy in `policy_dir` (read at every request) and audits into
    /// `audit_dir`; disposables for open-in start with `engine`.
    pub fn new(
        policy_dir: Option<PathBuf>,
        audit_dir: Option<&Path>,
        engine: crate::launch::Engine,
    ) -> Self {
        let audit = audit_dir.and_then(|d| {
            AuditLog::open(
                d,
                isolation_policy::audit::DEFAULT_MAX_BYTES,
                isolation_policy::audit::DEFAULT_KEEP,
            )
            .map_err(|e| tracing::warn!("service decisions will not be audited: {e}"))
            .ok()
        });
        ServiceBroker {
            policy_dir,
            last_good: None,
            audit,
            engine,
            next_question: 1,
            asked: Vec::new(),
            transfers: Vec::new(),
            opens: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Decide with the policy in `dir` from now on (the editor saved into the user's).
    pub fn set_policy_dir(&mut self, dir: PathBuf) {
        self.policy_dir = Some(dir);
    }

    /// Transfers running or ended since the last poll, for progress bars.
    pub fn transfers(&self) -> Vec<TransferProgress> {
        self.transfers
            .iter()
            .map(|t| t.transfer.progress())
            .collect()
    }

    /// Whether anything is in flight (a question, a transfer, an open-in).
    pub fn is_idle(&self) -> bool {
        self.asked.is_empty() && self.transfers.is_empty() && self.opens.is_empty()
    }

    /// Takes the offers of every partition whose agent is connected, decides them, and
    /// moves running transfers and open-ins along.
    pub fn poll(&mut self, sup: &Supervisor) -> Vec<ServiceEvent> {
        for (name, status) in sup.statuses() {
            if !matches!(status.agent, AgentStatus::Connected { .. }) {
                continue;
            }
            for offer in sup.take_agent_offers(&name).unwrap_or_default() {
                match offer {
                    AgentOffer::Files {
                        offer,
                        is_move,
                        files,
                    } => self.files_offered(sup, &name, offer, is_move, files),
                    AgentOffer::OpenUrl {
                        request,
                        url,
                        target,
                    } => self.open_asked(sup, &name, request, url, target),
                }
            }
        }
        self.expire_questions(sup);
        self.advance_transfers();
        self.advance_opens(sup);
        std::mem::take(&mut self.events)
    }

    /// The person's answer to question `id`: `Some(target)` chose and allowed it,
    /// `None` refused. Decided again with the policy saved now.
    pub fn answer(
        &mut self,
        sup: &Supervisor,
        id: u64,
        choice: Option<String>,
    ) -> Vec<ServiceEvent> {
        let Some(i) = self.asked.iter().position(|a| a.question.id == id) else {
            return Vec::new();
        };
        let asked = self.asked.remove(i);
        let source = asked.question.source.clone();
        match (asked.what, choice) {
            (Waiting::Files { offer, .. }, None) => {
                let req = Request::file_copy(&source, "@anyvm");
                self.record_user_refusal(&req);
                self.refuse_files(sup, &source, offer, "cancelled in Bulkhead".into());
            }
            (
                Waiting::Files {
                    offer,
                    is_move,
                    files,
                },
                Some(target),
            ) => {
                let req = Request::file_copy(&source, &target);
                let d = self.decide_chosen(&req, &target);
                if d.verdict.is_allow() {
                    self.start_transfer(sup, &source, offer, is_move, files, &target);
                } else {
                    let why = format!("to [{target}] refused: {}", d.explanation);
                    self.refuse_files(sup, &source, offer, why);
                }
            }
            (Waiting::Open { request, named, .. }, None) => {
                let req = Request::open_url(&source, named.as_deref());
                self.record_user_refusal(&req);
                self.refuse_open(sup, &source, request, "cancelled in Bulkhead".into());
            }
            (
                Waiting::Open {
                    request,
                    url,
                    named,
                },
                Some(target),
            ) => {
                let req = Request::open_url(&source, named.as_deref());
                let d = self.decide_chosen(&req, &target);
                if d.verdict.is_allow() {
                    self.deliver(sup, &source, request, url, &target);
                } else {
                    let why = format!("in [{target}] refused: {}", d.explanation);
                    self.refuse_open(sup, &source, request, why);
                }
            }
        }
        self.advance_opens(sup);
        std::mem::take(&mut self.events)
    }

    /// For a run with nobody to ask (`bulkhead up`, tests): each waiting question goes
    /// to its one target when the policy allows exactly one outright, and is refused
    /// otherwise.
    pub fn answer_unattended(&mut self, sup: &Supervisor) -> Vec<ServiceEvent> {
        let ids: Vec<(u64, String, String, Vec<String>)> = self
            .asked
            .iter()
            .map(|a| {
                (
                    a.question.id,
                    a.question.service.clone(),
                    a.question.source.clone(),
                    a.question.targets.clone(),
                )
            })
            .collect();
        let mut events = Vec::new();
        for (id, service_name, source, targets) in ids {
            let policy = self.policy();
            let allowed: Vec<&String> = targets
                .iter()
                .filter(|t| {
                    let req = Request::service(&service_name, None, &source, t);
                    policy
                        .as_ref()
                        .is_some_and(|p| p.decide(&req).verdict.is_allow())
                })
                .collect();
            let choice = match allowed.as_slice() {
                [one] => Some((*one).clone()),
                _ => None,
            };
            events.extend(self.answer(sup, id, choice));
        }
        events
    }

    fn files_offered(
        &mut self,
        sup: &Supervisor,
        source: &str,
        offer: u32,
        is_move: bool,
        files: Vec<FileEntry>,
    ) {
        let Some(policy) = self.policy() else {
            return self.refuse_files(sup, source, offer, "no policy is loaded".into());
        };
        let total = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
        let cap = policy.settings().file_transfer_max_bytes;
        if total > cap {
            let why = format!(
                "{} is more than the limit of {} for one transfer ([file_transfer] max_mib in partitions.toml)",
                bytes(total),
                bytes(cap)
            );
            return self.refuse_files(sup, source, offer, why);
        }
        let mut targets = Vec::new();
        let mut default_target = None;
        let mut rule = None;
        for (name, status) in sup.statuses() {
            let running = status.state == ProcessState::Running;
            let agent = matches!(status.agent, AgentStatus::Connected { .. });
            if name == source || !running || !agent {
                continue;
            }
            let d = policy.decide(&Request::file_copy(source, &name));
            let redirected = matches!(&d.verdict, Verdict::Allow { target: Some(t) } if *t != name);
            if d.verdict.is_deny() || redirected {
                continue;
            }
            if let Verdict::Ask {
                default_target: Some(t),
            } = &d.verdict
            {
                default_target.get_or_insert(t.clone());
            }
            if rule.is_none() {
                rule = d
                    .rule
                    .as_ref()
                    .map(|r| format!("{}:{}", r.file.display(), r.line));
            }
            targets.push(name);
        }
        if targets.is_empty() {
            let why = format!(
                "no running partition may receive files from [{source}] (policy: bulkhead.FileCopy)"
            );
            let req = Request::file_copy(source, "@anyvm");
            self.record(
                &req,
                &Decision::deny(None, format!("denied: {why}"), Vec::new()),
            );
            return self.refuse_files(sup, source, offer, why);
        }
        let default_target = default_target.filter(|t| targets.contains(t));
        let verb = if is_move { "move" } else { "copy" };
        self.say(
            source,
            StatusKind::Waiting,
            format!("files: choose where to {verb} {}", describe_files(&files)),
        );
        self.push_question(
            service::FILE_COPY,
            format!("{verb} {}", describe_files(&files)),
            source,
            targets,
            default_target,
            rule,
            Waiting::Files {
                offer,
                is_move,
                files,
            },
        );
    }

    fn open_asked(
        &mut self,
        sup: &Supervisor,
        source: &str,
        request: u32,
        url: String,
        named: Option<String>,
    ) {
        let Some(policy) = self.policy() else {
            return self.refuse_open(sup, source, request, "no policy is loaded".into());
        };
        let req = Request::open_url(source, named.as_deref());
        let d = policy.decide(&req);
        self.record(&req, &d);
        match &d.verdict {
            Verdict::Deny { .. } => self.refuse_open(sup, source, request, d.explanation),
            Verdict::Allow { target } => {
                let target = target
                    .clone()
                    .unwrap_or_else(|| named.clone().unwrap_or_default());
                self.deliver(sup, source, request, url, &target);
            }
            Verdict::Ask { default_target } => {
                let mut targets: Vec<String> = Vec::new();
                if let Some(t) = default_target.as_ref().filter(|t| t.starts_with("@dispvm")) {
                    targets.push(t.clone());
                }
                for p in policy.partitions() {
                    if p.name == source {
                        continue;
                    }
                    let ok = !policy.resolve_ask(&req, &p.name).verdict.is_deny();
                    let named_ok = named.as_deref().is_none_or(|n| n == p.name);
                    if ok && named_ok {
                        targets.push(p.name.clone());
                    }
                }
                if targets.is_empty() {
                    let why = format!("no partition may open links from [{source}]");
                    return self.refuse_open(sup, source, request, why);
                }
                let rule = d
                    .rule
                    .as_ref()
                    .map(|r| format!("{}:{}", r.file.display(), r.line));
                let default_target = default_target.clone().filter(|t| targets.contains(t));
                self.say(
                    source,
                    StatusKind::Waiting,
                    format!("open: choose where to open {url}"),
                );
                self.push_question(
                    service::OPEN_URL,
                    url.clone(),
                    source,
                    targets,
                    default_target,
                    rule,
                    Waiting::Open {
                        request,
                        url,
                        named,
                    },
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_question(
        &mut self,
        service: &str,
        argument: String,
        source: &str,
        targets: Vec<String>,
        default_target: Option<String>,
        rule: Option<String>,
        what: Waiting,
    ) {
        let question = Question {
            id: self.next_question,
            service: service.to_string(),
            argument,
            source: source.to_string(),
            targets,
            default_target,
            rule,
        };
        self.next_question += 1;
        self.events.push(ServiceEvent::Ask(question.clone()));
        self.asked.push(Asked {
            question,
            what,
            since: Instant::now(),
        });
    }

    fn start_transfer(
        &mut self,
        sup: &Supervisor,
        source: &str,
        offer: u32,
        is_move: bool,
        files: Vec<FileEntry>,
        target: &str,
    ) {
        let max_bytes = self
            .last_good
            .as_ref()
            .map_or(crate::transfer::DEFAULT_MAX_BYTES, |p| {
                p.settings().file_transfer_max_bytes
            });
        let what = describe_files(&files);
        let plan = TransferPlan {
            source: source.to_string(),
            offer,
            is_move,
            files,
            target: target.to_string(),
            max_bytes,
        };
        match sup.start_transfer(plan) {
            Ok(transfer) => {
                let verb = if is_move { "moving" } else { "copying" };
                let line = format!("files: {verb} {what} from [{source}] to [{target}]…");
                self.say(source, StatusKind::Waiting, line.clone());
                self.say(target, StatusKind::Waiting, line);
                self.transfers.push(RunningTransfer { transfer, what });
            }
            Err(e) => self.refuse_files(sup, source, offer, e.to_string()),
        }
    }

    fn advance_transfers(&mut self) {
        let mut i = 0;
        while i < self.transfers.len() {
            let p = self.transfers[i].transfer.progress();
            if p.state == TransferState::Running {
                i += 1;
                continue;
            }
            let t = self.transfers.remove(i);
            let verb = if p.is_move { "moved" } else { "copied" };
            let (kind, line) = match &p.state {
                TransferState::Failed(e) => (
                    StatusKind::Refused,
                    format!(
                        "files: {} from [{}] to [{}] failed: {e}",
                        t.what, p.source, p.target
                    ),
                ),
                _ => (
                    StatusKind::Done,
                    format!(
                        "files: {verb} {} from [{}] to [{}] (~/Incoming/{}/) in {:.1} s",
                        t.what,
                        p.source,
                        p.target,
                        p.source,
                        p.elapsed.as_secs_f64()
                    ),
                ),
            };
            self.say(&p.source, kind, line.clone());
            self.say(&p.target, kind, line);
        }
    }

    /// Sends the URL to `target` (a partition, started if it is not running, or a new
    /// disposable for `@dispvm` / `@dispvm:NAME`) once its agent is there.
    fn deliver(&mut self, sup: &Supervisor, source: &str, request: u32, url: String, target: &str) {
        let target = if target.starts_with("@dispvm") {
            let Some(policy) = self.last_good.clone() else {
                return self.refuse_open(sup, source, request, "no policy is loaded".into());
            };
            match sup.start_dispvm_target(&policy, target, self.engine) {
                Ok(Some(d)) => {
                    let of = target.strip_prefix("@dispvm:").unwrap_or("@dispvm");
                    self.events.push(ServiceEvent::DisposableStarted {
                        name: d.name.clone(),
                        of: of.to_string(),
                        restored: d.restored,
                    });
                    d.name
                }
                Ok(None) => target.to_string(),
                Err(e) => {
                    let why = format!("starting a disposable for it: {e}");
                    return self.refuse_open(sup, source, request, why);
                }
            }
        } else {
            target.to_string()
        };
        match sup.status(&target) {
            Err(e) => return self.refuse_open(sup, source, request, e.to_string()),
            Ok(s)
                if matches!(
                    s.state,
                    ProcessState::Running | ProcessState::Booting | ProcessState::Paused
                ) => {}
            Ok(_) => {
                if let Err(e) = sup.start(&target) {
                    let why = format!("starting [{target}]: {e}");
                    return self.refuse_open(sup, source, request, why);
                }
                self.say(
                    &target,
                    StatusKind::Waiting,
                    format!("open: starting [{target}] for a link from [{source}]"),
                );
            }
        }
        self.opens.push(PendingOpen {
            source: source.to_string(),
            request,
            url,
            target,
            deadline: Instant::now() + OPEN_WAIT,
            sent: None,
        });
    }

    fn advance_opens(&mut self, sup: &Supervisor) {
        let mut i = 0;
        while i < self.opens.len() {
            match self.step_open(sup, i) {
                None => i += 1,
                Some(result) => {
                    let o = self.opens.remove(i);
                    match result {
                        Ok(()) => {
                            let _ = sup.agent_outcome(
                                &o.source,
                                OfferOutcome::OpenUrl {
                                    request: o.request,
                                    error: None,
                                },
                            );
                            let line = format!(
                                "open: {} from [{}] opened in [{}]",
                                o.url, o.source, o.target
                            );
                            self.say(&o.source, StatusKind::Done, line.clone());
                            self.say(&o.target, StatusKind::Done, line);
                        }
                        Err(e) => {
                            let why = format!("[{}]: {e}", o.target);
                            self.refuse_open(sup, &o.source, o.request, why);
                        }
                    }
                }
            }
        }
    }

    /// `None` while waiting; the result once the target opened the URL or could not.
    fn step_open(&mut self, sup: &Supervisor, i: usize) -> Option<Result<(), String>> {
        let o = &mut self.opens[i];
        let status = match sup.status(&o.target) {
            Ok(s) => s,
            Err(e) => return Some(Err(e.to_string())),
        };
        if let ProcessState::Stopped | ProcessState::Crashed { .. } | ProcessState::Exited { .. } =
            &status.state
        {
            if o.sent.is_some() || Instant::now() > o.deadline {
                return Some(Err("it stopped before opening the link".into()));
            }
        }
        if let Some(id) = o.sent {
            return match sup.take_agent_reply(&o.target, id) {
                Ok(Some(AgentReply::Done { .. })) => Some(Ok(())),
                Ok(Some(AgentReply::Failed { reason, .. })) => Some(Err(reason)),
                Ok(Some(other)) => Some(Err(format!("unexpected answer {other:?}"))),
                Ok(None) => None,
                Err(e) => Some(Err(e.to_string())),
            };
        }
        if Instant::now() > o.deadline {
            return Some(Err(format!(
                "its agent did not come up within {} s",
                OPEN_WAIT.as_secs()
            )));
        }
        if !matches!(status.agent, AgentStatus::Connected { .. }) {
            return None;
        }
        match sup.agent_request(&o.target, AgentRequest::OpenUrl(o.url.clone())) {
            Ok(id) => {
                o.sent = Some(id);
                None
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }

    fn expire_questions(&mut self, sup: &Supervisor) {
        let late: Vec<u64> = self
            .asked
            .iter()
            .filter(|a| a.since.elapsed() > QUESTION_WAIT)
            .map(|a| a.question.id)
            .collect();
        for id in late {
            let events = self.answer(sup, id, None);
            self.events.extend(events);
        }
    }

    fn refuse_files(&mut self, sup: &Supervisor, source: &str, offer: u32, why: String) {
        let outcome = OfferOutcome::Files {
            offer,
            error: Some(why.clone()),
        };
        self.refuse(sup, source, outcome, "files", why);
    }

    fn refuse_open(&mut self, sup: &Supervisor, source: &str, request: u32, why: String) {
        let outcome = OfferOutcome::OpenUrl {
            request,
            error: Some(why.clone()),
        };
        self.refuse(sup, source, outcome, "open", why);
    }

    /// Tells `source`'s agent its request was refused and says so in a status line
    /// (`what` is the line's topic: `files`, `open`).
    fn refuse(
        &mut self,
        sup: &Supervisor,
        source: &str,
        outcome: OfferOutcome,
        what: &str,
        why: String,
    ) {
        if let Err(e) = sup.agent_outcome(source, outcome) {
            tracing::warn!(
                source,
                "telling the agent its {what} request was refused: {e}"
            );
        }
        self.say(
            source,
            StatusKind::Refused,
            format!("{what} from [{source}] refused: {why}"),
        );
    }

    /// A status line; `text` starts with its topic (`files: …`, `open …`).
    fn say(&mut self, partition: &str, kind: StatusKind, text: String) {
        match kind {
            StatusKind::Refused => tracing::info!(partition, "{text}"),
            _ => tracing::debug!(partition, "{text}"),
        }
        let (topic, text) = if let Some(t) = text.strip_prefix("files: ") {
            ("files", t.to_string())
        } else if let Some(t) = text.strip_prefix("open: ") {
            ("open", t.to_string())
        } else if text.starts_with("files ") {
            ("files", text)
        } else {
            ("open", text)
        };
        self.events.push(ServiceEvent::Status {
            partition: partition.to_string(),
            topic,
            kind,
            text,
        });
    }

    /// The policy as saved now; a broken file keeps the last good one.
    fn policy(&mut self) -> Option<Policy> {
        if let Some(dir) = &self.policy_dir {
            match Policy::load(dir) {
                Ok((p, _)) => self.last_good = Some(p),
                Err(e) => tracing::warn!(
                    "the saved policy does not load ({e}); deciding with the last good one"
                ),
            }
        }
        self.last_good.clone()
    }

    /// The person chose `target`: allowed if the policy saved now allows or asks for it.
    fn decide_chosen(&mut self, req: &Request, target: &str) -> Decision {
        let mut d = match self.policy() {
            Some(p) => p.resolve_ask(req, target),
            None => Decision::deny(None, "denied: no policy is loaded".into(), Vec::new()),
        };
        d.explanation = match d.verdict {
            Verdict::Allow { .. } => format!("asked → allowed by the user ({})", d.explanation),
            _ => format!("asked → {}", d.explanation),
        };
        self.record(req, &d);
        d
    }

    fn record_user_refusal(&mut self, req: &Request) {
        let d = Decision::deny(None, "asked → denied by the user".into(), Vec::new());
        self.record(req, &d);
    }

    fn record(&mut self, req: &Request, d: &Decision) {
        if let Some(log) = &self.audit {
            match log.record(req, d) {
                Ok(()) => self.events.push(ServiceEvent::Audited),
                Err(e) => tracing::warn!("audit: {e}"),
            }
        }
    }
}

/// "2 files (293.0 KiB)" or "`a.txt` (3 B)".
pub fn describe_files(files: &[FileEntry]) -> String {
    let total = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    match files {
        [one] => format!("`{}` ({})", one.name, bytes(total)),
        _ => format!("{} files ({})", files.len(), bytes(total)),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_described_by_count_and_size() {
        let f = |name: &str, size| FileEntry {
            name: name.into(),
            size,
        };
        assert_eq!(describe_files(&[f("a.txt", 3)]), "`a.txt` (3 B)");
        assert_eq!(
            describe_files(&[f("a", 300_001), f("b", 0)]),
            "2 files (293.0 KiB)"
        );
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
