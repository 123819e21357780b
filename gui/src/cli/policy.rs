//! `bulkhead policy …`: check a policy directory, explain a decision.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use isolation_policy::{default_policy_dir, Decision, Policy, Report, Sources, Verdict};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory and lint it. Exit 0: valid; 1: errors; 2: unreadable.
    Check(CheckArgs),
    /// Show how a request would be decided, and the rules looked at.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy directory (partitions.toml + policy.d/). Default: $BULKHEAD_POLICY_DIR,
    /// ~/.config/bulkhead, /etc/bulkhead, or the source tree's assets/policy.
    pub dir: Option<PathBuf>,
    /// Fail (exit 1) on lint warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Service name, optionally with its argument: `bulkhead.OpenURL`, `bulkhead.OpenIn+url`.
    #[arg(long)]
    pub service: String,
    /// Source partition.
    #[arg(long)]
    pub from: String,
    /// Target partition, `@dispvm` or `@dispvm:NAME`.
    #[arg(long)]
    pub to: String,
    /// Policy directory (default as for `check`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn load_sources(dir: Option<PathBuf>) -> Result<Sources, ExitCode> {
    let dir = dir.unwrap_or_else(default_policy_dir);
    Sources::read(&dir).map_err(|e| {
        eprintln!("bulkhead policy: {e}");
        ExitCode::from(2)
    })
}

fn print_report(report: &Report) {
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let sources = match load_sources(args.dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (policy, report) = sources.check();
    print_report(&report);
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    let dir = sources.dir.display();
    match policy {
        Some(p) if warnings == 0 || !args.deny_warnings => {
            println!(
                "{dir}: valid: {} partitions, {} rules, {warnings} warnings",
                p.partitions().len(),
                p.rules().len()
            );
            ExitCode::SUCCESS
        }
        Some(_) => {
            println!("{dir}: {warnings} warnings (failing because of --deny-warnings)");
            ExitCode::from(1)
        }
        None => {
            println!("{dir}: invalid: {errors} errors, {warnings} warnings");
            ExitCode::from(1)
        }
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    let sources = match load_sources(args.dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (policy, report) = sources.check();
    let Some(policy) = policy else {
        print_report(&report);
        eprintln!("bulkhead policy: cannot explain with an invalid policy; fix the errors above");
        return ExitCode::from(2);
    };
    let decision = policy.what_if(&args.service, &args.from, &args.to);
    print!("{}", render(&policy, &decision));
    ExitCode::SUCCESS
}

/// The explanation as printed: verdict, deciding rule, then the rule chain.
fn render(policy: &Policy, d: &Decision) -> String {
    let verdict = match &d.verdict {
        Verdict::Allow { target: Some(t) } => format!("allow (target {t})"),
        Verdict::Allow { target: None } => "allow".into(),
        Verdict::Deny { .. } => "deny".into(),
        Verdict::Ask {
            default_target: Some(t),
        } => format!("ask (default target {t})"),
        Verdict::Ask { .. } => "ask".into(),
    };
    let mut out = format!("decision: {verdict}\n");
    match &d.rule {
        Some(r) => out.push_str(&format!("rule:     {r}\n")),
        None => out.push_str("rule:     none (default deny)\n"),
    }
    out.push_str(&format!("why:      {}\n", d.explanation));
    if !d.chain.is_empty() {
        out.push_str("chain:\n");
        for step in &d.chain {
            let mark = if step.matched { "=>" } else { "  " };
            out.push_str(&format!("  {mark} {}  ({})\n", step.rule, step.reason));
        }
    }
    out.push_str(&format!(
        "policy:   {} ({} rules)\n",
        policy.dir().display(),
        policy.rules().len()
    ));
    out
}
