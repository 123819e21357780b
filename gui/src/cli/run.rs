//! `bulkhead run …`: one partition, headless, in its own `bulkhead-vmm` process.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// Same flags as `bulkhead-vmm run`; they are passed through unchanged.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = false)]
pub struct RunArgs {
    #[command(flatten)]
    pub vmm: vmm_core::cli::RunArgs,
}

fn forwarded_args(a: &vmm_core::cli::RunArgs) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        format!("--mem={}M", a.mem.0),
        format!("--vcpus={}", a.vcpus),
        format!("--cmdline={}", a.cmdline),
        format!("--serial={}", a.serial),
    ];
    args.push(match a.display.0 {
        Some(d) => format!("--display={}x{}", d.0, d.1),
        None => "--display=none".into(),
    });
    let mut path_arg = |name: &str, p: &Option<PathBuf>| {
        if let Some(p) = p {
            args.push(format!("--{name}={}", p.display()));
        }
    };
    path_arg("kernel", &a.kernel);
    path_arg("initrd", &a.initrd);
    path_arg("screenshot", &a.screenshot);
    if let Some(m) = &a.screenshot_on {
        args.push(format!("--screenshot-on={m}"));
    }
    if let Some(t) = a.timeout {
        args.push(format!("--timeout={t}"));
    }
    args
}

pub fn run(args: RunArgs) -> ExitCode {
    let binary = bulkhead::supervisor::launch::vmm_binary();
    let err = Command::new(&binary).args(forwarded_args(&args.vmm)).exec();
    eprintln!(
        "bulkhead: starting the partition process {}: {err} (install bulkhead-vmm next to bulkhead or set BULKHEAD_VMM)",
        binary.display()
    );
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn every_flag_is_forwarded_to_the_partition_process() {
        let t = T::parse_from([
            "t",
            "--kernel=/k",
            "--mem=1G",
            "--vcpus=2",
            "--display=1280x800",
            "--screenshot=/s.png",
            "--screenshot-on=READY",
            "--timeout=9",
        ]);
        let args = forwarded_args(&t.run.vmm);
        let reparsed = vmm_core::cli::VmmCli::parse_from(
            std::iter::once("bulkhead-vmm".to_string()).chain(args),
        );
        let vmm_core::cli::VmmCommand::Run(r) = reparsed.command else {
            panic!("not a run command");
        };
        assert_eq!(r.mem.0, 1024);
        assert_eq!(r.vcpus, 2);
        assert_eq!(r.display.0.map(|d| (d.0, d.1)), Some((1280, 800)));
        assert_eq!(r.kernel, Some(PathBuf::from("/k")));
        assert_eq!(r.screenshot_on.as_deref(), Some("READY"));
        assert_eq!(r.timeout, Some(9));
        assert_eq!(r.cmdline, vmm_core::cli::DEFAULT_CMDLINE);
    }
}
