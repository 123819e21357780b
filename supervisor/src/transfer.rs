//! Files from one partition to another, through both guest agents (the mechanism behind
//! `bulkhead-copy` / `bulkhead-move`; the policy and the choice of target are the
//! caller's, see [`crate::services`]). The source's agent offered the files; the engine
//! pulls them in chunks with `FileRead` and pushes each chunk to the target's agent with
//! `FileWrite`, a few in flight each way, then `FileCommit`s and tells the source the
//! outcome (a move deletes its files only then). Both agents are hostile: every answer is
//! checked against what was asked (length, kind), and a silent agent fails the transfer
//! after [`crate::agent::REQUEST_TIMEOUT`], never hangs it. At most `WINDOW` chunks are
//! held in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{AgentError, AgentReply, AgentRequest, FileEntry, OfferOutcome};
use crate::partition::Slot;
use crate::{Supervisor, SupervisorError};

/// Bytes per `FileRead` / `FileWrite`.
pub const CHUNK: u32 = 128 * 1024;
/// Requests in flight to each agent. Writes in flight stay well under what the
/// partition process holds for a slow agent (1 MiB, beyond which it drops bytes).
pub const WINDOW: usize = 4;
/// The default cap on one transfer's bytes (the policy's `[file_transfer] max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// How long the engine sleeps when neither agent has answered anything yet.
const IDLE: Duration = Duration::from_millis(1);

static NEXT_TRANSFER: AtomicU32 = AtomicU32::new(1);

/// What to move where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferPlan {
    pub source: String,
    /// The source agent's offer number.
    pub offer: u32,
    pub is_move: bool,
    pub files: Vec<FileEntry>,
    pub target: String,
    /// Refused before anything moves if the files add up to more.
    pub max_bytes: u64,
}

impl TransferPlan {
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferState {
    Running,
    /// Every file landed in the target (and a move's sources were told to go).
    Done,
    Failed(String),
}

/// Where a transfer is, for the app's progress bar and status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferProgress {
    pub source: String,
    pub target: String,
    pub is_move: bool,
    pub files: usize,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub state: TransferState,
    /// From the first request to the outcome.
    pub elapsed: Duration,
}

impl TransferProgress {
    /// 0.0 ..= 1.0
    pub fn fraction(&self) -> f32 {
        if self.total_bytes == 0 {
            return if self.state == TransferState::Running {
                0.0
            } else {
                1.0
            };
        }
        (self.done_bytes as f64 / self.total_bytes as f64) as f32
    }
}

/// A transfer running on its own thread.
#[derive(Clone)]
pub struct Transfer {
    progress: Arc<Mutex<TransferProgress>>,
    cancel: Arc<AtomicBool>,
}

impl Transfer {
    pub fn progress(&self) -> TransferProgress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops at the next chunk; the target discards what arrived.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits until the transfer ended or `timeout` passed; the state then.
    pub fn wait(&self, timeout: Duration) -> TransferState {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.progress().state;
            if state != TransferState::Running || Instant::now() >= deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Supervisor {
    /// Starts moving the files of `plan.source`'s open offer `plan.offer` into
    /// `~/Incoming/<source>/` of `plan.target`. The caller decided the policy. Fails at
    /// once if either partition is unknown; anything later (an agent gone, refusing or
    /// lying, the size cap) ends in [`TransferState::Failed`] with the reason, which the
    /// source's command also prints.
    pub fn start_transfer(&self, plan: TransferPlan) -> Result<Transfer, SupervisorError> {
        let source = self.slot(&plan.source)?;
        let target = self.slot(&plan.target)?;
        let transfer = Transfer {
            progress: Arc::new(Mutex::new(TransferProgress {
                source: plan.source.clone(),
                target: plan.target.clone(),
                is_move: plan.is_move,
                files: plan.files.len(),
                total_bytes: plan.total_bytes(),
                done_bytes: 0,
                state: TransferState::Running,
                elapsed: Duration::ZERO,
            })),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let handle = transfer.clone();
        std::thread::Builder::new()
            .name(format!("transfer-{}", plan.source))
            .spawn(move || run(&plan, &source, &target, &handle))
            .map_err(|e| {
                SupervisorError::Agent(AgentError::CutOff(format!(
                    "cannot start the transfer thread: {e}"
                )))
            })?;
        Ok(transfer)
    }
}

fn run(plan: &TransferPlan, source: &Slot, target: &Slot, transfer: &Transfer) {
    let started = Instant::now();
    let id = NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed);
    let result = copy(plan, id, source, target, transfer);
    if result.is_err() {
        // Best effort: the target drops its partial files (it also does on its own
        // after a while if this never arrives).
        let _ = target.agent_request(AgentRequest::FileCommit {
            transfer: id,
            abort: true,
        });
    }
    let error = result.as_ref().err().cloned();
    if let Err(e) = source.agent_outcome(OfferOutcome::Files {
        offer: plan.offer,
        error: error.clone(),
    }) {
        tracing::warn!(source = %plan.source, "telling the source how its offer ended: {e}");
    }
    let mut p = transfer.progress.lock().unwrap_or_else(|e| e.into_inner());
    p.elapsed = started.elapsed();
    p.state = match error {
        None => TransferState::Done,
        Some(e) => TransferState::Failed(e),
    };
    tracing::info!(source = %plan.source, target = %plan.target, bytes = p.done_bytes, state = ?p.state, elapsed = ?p.elapsed, "file transfer ended");
}

/// One chunk: file `index`, `len` bytes at `offset`.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    index: u32,
    offset: u64,
    len: u32,
}

fn chunks(files: &[FileEntry]) -> VecDeque<Chunk> {
    let mut out = VecDeque::new();
    for (index, f) in files.iter().enumerate() {
        let mut offset = 0;
        while offset < f.size {
            let len = (f.size - offset).min(u64::from(CHUNK)) as u32;
            // index < MAX_FILES (256) fits u32.
            out.push_back(Chunk {
                index: index as u32,
                offset,
                len,
            });
            offset += u64::from(len);
        }
    }
    out
}

fn copy(
    plan: &TransferPlan,
    id: u32,
    source: &Slot,
    target: &Slot,
    transfer: &Transfer,
) -> Result<(), String> {
    let total = plan.total_bytes();
    if total > plan.max_bytes {
        return Err(format!(
            "{total} bytes is more than the limit of {} bytes for one transfer",
            plan.max_bytes
        ));
    }
    let incoming = AgentRequest::FileIncoming {
        transfer: id,
        source: plan.source.clone(),
        files: plan.files.clone(),
    };
    let asked = request(target, incoming, &plan.target)?;
    expect_done(wait(target, asked, transfer)?, &plan.target)?;

    let mut todo = chunks(&plan.files);
    let mut reads: HashMap<u32, Chunk> = HashMap::new();
    let mut ready: VecDeque<(Chunk, Vec<u8>)> = VecDeque::new();
    let mut writes: HashMap<u32, u32> = HashMap::new();
    while !(todo.is_empty() && reads.is_empty() && ready.is_empty() && writes.is_empty()) {
        if transfer.cancel.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
        let mut moved = false;
        while reads.len() < WINDOW && ready.len() < WINDOW {
            let Some(chunk) = todo.pop_front() else { break };
            let read = AgentRequest::FileRead {
                offer: plan.offer,
                index: chunk.index,
                offset: chunk.offset,
                len: chunk.len,
            };
            match try_request(source, read, &plan.source)? {
                Some(rid) => {
                    reads.insert(rid, chunk);
                    moved = true;
                }
                None => {
                    todo.push_front(chunk);
                    break;
                }
            }
        }
        for (rid, chunk) in take_answered(source, &mut reads) {
            let data = match rid {
                AgentReply::FileData { data, .. } => data,
                AgentReply::Failed { reason, .. } => {
                    return Err(format!("{}: {reason}", plan.source))
                }
                other => return Err(format!("{}: unexpected answer {other:?}", plan.source)),
            };
            if data.len() != chunk.len as usize {
                return Err(format!(
                    "{}: `{}` changed while it was copied ({} bytes at offset {} instead of {})",
                    plan.source,
                    plan.files[chunk.index as usize].name,
                    data.len(),
                    chunk.offset,
                    chunk.len
                ));
            }
            ready.push_back((chunk, data));
            moved = true;
        }
        while writes.len() < WINDOW {
            let Some((chunk, data)) = ready.pop_front() else {
                break;
            };
            let write = AgentRequest::FileWrite {
                transfer: id,
                index: chunk.index,
                offset: chunk.offset,
                data,
            };
            // WINDOW writes and a clipboard request or two stay under MAX_PENDING:
            // this never finds the agent busy.
            let wid = target
                .agent_request(write)
                .map_err(|e| format!("{}: {e}", plan.target))?;
            writes.insert(wid, chunk.len);
            moved = true;
        }
        for (reply, len) in take_answered(target, &mut writes) {
            expect_done(reply, &plan.target)?;
            let mut p = transfer.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.done_bytes += u64::from(len);
            moved = true;
        }
        if !moved {
            std::thread::sleep(IDLE);
        }
    }
    let commit = AgentRequest::FileCommit {
        transfer: id,
        abort: false,
    };
    let asked = request(target, commit, &plan.target)?;
    expect_done(wait(target, asked, transfer)?, &plan.target)
}

/// A request, or `None` while the agent has its fill of requests in flight.
fn try_request(slot: &Slot, r: AgentRequest, who: &str) -> Result<Option<u32>, String> {
    match slot.agent_request(r) {
        Ok(id) => Ok(Some(id)),
        Err(SupervisorError::Agent(AgentError::Busy)) => Ok(None),
        Err(e) => Err(format!("{who}: {e}")),
    }
}

fn request(slot: &Slot, r: AgentRequest, who: &str) -> Result<u32, String> {
    let deadline = Instant::now() + crate::agent::REQUEST_TIMEOUT;
    loop {
        if let Some(id) = try_request(slot, r.clone(), who)? {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            return Err(format!("{who}: its agent stayed busy"));
        }
        std::thread::sleep(IDLE);
    }
}

/// The answer to `id`; the agent link fails it after its timeout, so this ends.
fn wait(slot: &Slot, id: u32, transfer: &Transfer) -> Result<AgentReply, String> {
    // The link's own timeout answers first; this one only guards against a link that
    // went away with the process (a new process has a new link).
    let deadline = Instant::now() + crate::agent::REQUEST_TIMEOUT + Duration::from_secs(5);
    loop {
        if let Some(reply) = slot.take_agent_reply(id) {
            return Ok(reply);
        }
        if transfer.cancel.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("{}: its agent went away", slot.spec.name()));
        }
        std::thread::sleep(IDLE);
    }
}

fn take_answered<T: Copy>(slot: &Slot, asked: &mut HashMap<u32, T>) -> Vec<(AgentReply, T)> {
    let ids: Vec<u32> = asked.keys().copied().collect();
    let mut out = Vec::new();
    for id in ids {
        if let Some(reply) = slot.take_agent_reply(id) {
            if let Some(v) = asked.remove(&id) {
                out.push((reply, v));
            }
        }
    }
    out
}

fn expect_done(reply: AgentReply, who: &str) -> Result<(), String> {
    match reply {
        AgentReply::Done { .. } => Ok(()),
        AgentReply::Failed { reason, .. } => Err(format!("{who}: {reason}")),
        other => Err(format!("{who}: unexpected answer {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_into_chunks_that_cover_every_byte_once() {
        let files = vec![
            FileEntry {
                name: "empty".into(),
                size: 0,
            },
            FileEntry {
                name: "a".into(),
                size: u64::from(CHUNK) * 2 + 5,
            },
            FileEntry {
                name: "b".into(),
                size: 7,
            },
        ];
        let c: Vec<(u32, u64, u32)> = chunks(&files)
            .into_iter()
            .map(|c| (c.index, c.offset, c.len))
            .collect();
        assert_eq!(
            c,
            vec![
                (1, 0, CHUNK),
                (1, u64::from(CHUNK), CHUNK),
                (1, 2 * u64::from(CHUNK), 5),
                (2, 0, 7)
            ]
        );
    }

    #[test]
    fn a_plan_larger_than_its_cap_adds_up_without_overflow() {
        let plan = TransferPlan {
            source: "a".into(),
            offer: 1,
            is_move: false,
            files: vec![
                FileEntry {
                    name: "x".into(),
                    size: u64::MAX,
                },
                FileEntry {
                    name: "y".into(),
                    size: 1,
                },
            ],
            target: "b".into(),
            max_bytes: DEFAULT_MAX_BYTES,
        };
        assert_eq!(plan.total_bytes(), u64::MAX);
    }
}
