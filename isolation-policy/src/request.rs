//! The vocabulary of deciding: what a partition asks for ([`Request`]) and what the
//! policy answers ([`Decision`], [`Verdict`], [`ChainStep`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::network::NetTarget;
use crate::rules::RuleRef;

/// Well-known services the supervisor asks about.
pub mod service {
    /// Paste the global clipboard (copied from `source`) into `target`.
    pub const CLIPBOARD_PASTE: &str = "bulkhead.ClipboardPaste";
    /// Copy `source`'s clipboard into the host's one-slot buffer (target [`HOST`]);
    /// decided by the source's `clipboard.copy_out` setting, not by rules.
    pub const CLIPBOARD_COPY: &str = "bulkhead.ClipboardCopy";
    /// The target of a request that ends in the host itself (the clipboard buffer).
    pub const HOST: &str = "@host";
    /// Copy files from `source` into `target`.
    pub const FILE_COPY: &str = "bulkhead.FileCopy";
    /// Open a URL from `source` (`bulkhead-open`) in `target`'s browser; a request that
    /// names no target has the target `@default`.
    pub const OPEN_URL: &str = "bulkhead.OpenURL";
}

/// Something a partition wants to do that crosses its boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    /// A named service from `source` to `target` (a partition, `@dispvm` or `@dispvm:NAME`).
    Service {
        service: String,
        /// The argument without its `+`; `None` when the caller gave none.
        argument: Option<String>,
        source: String,
        target: String,
    },
    /// A network connection from `source`.
    Network {
        source: String,
        destination: NetTarget,
    },
    /// A DNS lookup from `source` through the NAT's resolver.
    Dns { source: String },
}

impl Request {
    pub fn service(service: &str, argument: Option<&str>, source: &str, target: &str) -> Self {
        Request::Service {
            service: service.to_string(),
            argument: argument.map(str::to_string),
            source: source.to_string(),
            target: target.to_string(),
        }
    }
    pub fn clipboard_paste(from: &str, to: &str) -> Self {
        Request::service(service::CLIPBOARD_PASTE, None, from, to)
    }
    /// Copying `from`'s clipboard into the host's buffer.
    pub fn clipboard_copy(from: &str) -> Self {
        Request::service(service::CLIPBOARD_COPY, None, from, service::HOST)
    }
    pub fn file_copy(from: &str, to: &str) -> Self {
        Request::service(service::FILE_COPY, None, from, to)
    }
    /// `bulkhead-open` in `from`: `to` is the partition it named, else `@default`.
    pub fn open_url(from: &str, to: Option<&str>) -> Self {
        Request::service(
            service::OPEN_URL,
            None,
            from,
            to.unwrap_or(crate::rules::DEFAULT_TARGET),
        )
    }
    pub fn network(from: &str, destination: NetTarget) -> Self {
        Request::Network {
            source: from.to_string(),
            destination,
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Request::Service { source, .. }
            | Request::Network { source, .. }
            | Request::Dns { source } => source,
        }
    }

    /// The target partition, for service requests.
    pub fn target(&self) -> Option<&str> {
        match self {
            Request::Service { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Service {
                service,
                argument,
                source,
                target,
            } => {
                write!(f, "{service}")?;
                if let Some(a) = argument {
                    write!(f, "+{a}")?;
                }
                write!(f, " from {source} to {target}")
            }
            Request::Network {
                source,
                destination,
            } => write!(f, "network from {source} to {destination}"),
            Request::Dns { source } => write!(f, "DNS lookup from {source}"),
        }
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Go ahead; `target` is where the request goes (differs from the request's target
    /// after an `allow target=` redirect; `None` for network requests).
    Allow {
        target: Option<String>,
    },
    Deny {
        notify: bool,
    },
    /// Ask the user; the GUI preselects `default_target` and then calls
    /// [`Policy::resolve_ask`](crate::Policy::resolve_ask).
    Ask {
        default_target: Option<String>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny { .. })
    }
    pub fn is_ask(&self) -> bool {
        matches!(self, Verdict::Ask { .. })
    }
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::Ask { .. } => "ask",
        }
    }
}

/// One rule looked at while deciding, and why it did or did not match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainStep {
    pub rule: RuleRef,
    pub matched: bool,
    pub reason: String,
}

/// A decision with the rule (or setting) that made it and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// `None` when nothing matched (default deny) or the request named no partition.
    pub rule: Option<RuleRef>,
    pub explanation: String,
    /// Rules for the same service (and argument) that were checked, in order.
    pub chain: Vec<ChainStep>,
}

impl Decision {
    pub fn deny(rule: Option<RuleRef>, explanation: String, chain: Vec<ChainStep>) -> Self {
        Decision {
            verdict: Verdict::Deny { notify: true },
            rule,
            explanation,
            chain,
        }
    }
}
