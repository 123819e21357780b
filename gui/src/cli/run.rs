//! `bulkhead run …`: one partition, headless, in its own sandboxed `bulkhead-vmm`
//! process run by the same supervisor as the desktop app and `bulkhead up`. Serial output
//! and screenshots come back through the control socket and the shared framebuffer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead::supervisor::launch::vmm_binary;
use bulkhead::supervisor::{LaunchSpec, PartitionState, RestartPolicy, Supervisor};
use vmm_core::devices::framebuffer::write_png;

/// Same flags as `bulkhead-vmm run`.
pub type RunArgs = vmm_core::cli::RunArgs;

/// The partition process's own flags; serial, screenshots and the timeout are handled
/// on this side of the control socket.
fn forwarded_args(a: &vmm_core::cli::RunArgs) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        format!("--name={}", a.name),
        format!("--mem={}M", a.mem.0),
        format!("--vcpus={}", a.vcpus),
        format!("--cmdline={}", a.cmdline),
    ];
    if a.test_card {
        args.push("--test-card".into());
    }
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
    args
}

/// Exit codes as `bulkhead-vmm run`: 0 powered off or rebooted, 1 could not start,
/// 3 crashed, 4 stopped after --timeout.
pub fn run(args: RunArgs) -> ExitCode {
    match supervised_run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("bulkhead: {msg}");
            ExitCode::from(1)
        }
    }
}

fn serial_out(target: &str) -> Result<Box<dyn Write>, String> {
    if target == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = File::create(target).map_err(|e| format!("creating serial log {target}: {e}"))?;
    Ok(Box::new(f))
}

fn save_screenshot(sup: &Supervisor, name: &str, path: &std::path::Path) -> Result<(), String> {
    let fb = sup
        .framebuffer(name)
        .map_err(|e| e.to_string())?
        .ok_or("the partition has no display")?;
    let mut pixels = Vec::new();
    fb.read_all(&mut pixels).map_err(|e| e.to_string())?;
    let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    write_png(&fb.layout(), &pixels, BufWriter::new(file)).map_err(|e| e.to_string())?;
    eprintln!("bulkhead: screenshot saved to {}", path.display());
    Ok(())
}

fn supervised_run(a: &vmm_core::cli::RunArgs) -> Result<u8, String> {
    let name = a.name.clone();
    let spec = LaunchSpec {
        name: name.clone(),
        program: vmm_binary(),
        args: forwarded_args(a).into_iter().map(Into::into).collect(),
        restart: RestartPolicy::Never,
    };
    let sup = Supervisor::new(vec![spec]).map_err(|e| e.to_string())?;
    sup.start(&name).map_err(|e| e.to_string())?;
    let mut out = serial_out(&a.serial)?;
    let marker = a.screenshot_on.as_deref().unwrap_or("").as_bytes().to_vec();
    let mut recent: Vec<u8> = Vec::new();
    let mut shot_taken = false;
    let deadline = a.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let code = loop {
        let bytes = sup.take_serial(&name).map_err(|e| e.to_string())?;
        let _ = out.write_all(&bytes);
        let _ = out.flush();
        recent.extend_from_slice(&bytes);
        let keep = recent
            .len()
            .saturating_sub(marker.len().max(1) * 2 + bytes.len());
        let found = !marker.is_empty() && recent.windows(marker.len()).any(|w| w == marker);
        recent.drain(..keep);
        if found && !shot_taken {
            if let Some(path) = &a.screenshot {
                save_screenshot(&sup, &name, path)?;
                shot_taken = true;
            }
        }
        let state = sup.status(&name).map_err(|e| e.to_string())?.state;
        match state {
            PartitionState::Exited { .. } => {
                eprintln!("bulkhead: partition {name} powered off");
                break 0;
            }
            PartitionState::Crashed { reason } => {
                eprintln!("bulkhead: partition {name} crashed: {reason}");
                break 3;
            }
            _ => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if let (Some(path), false) = (&a.screenshot, shot_taken || !marker.is_empty()) {
                save_screenshot(&sup, &name, path)?;
                shot_taken = true;
            }
            eprintln!("bulkhead: partition {name} stopped by the host (timeout)");
            sup.stop(&name, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            break 4;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let (Some(path), false) = (&a.screenshot, shot_taken || !marker.is_empty()) {
        save_screenshot(&sup, &name, path)?;
    }
    Ok(code)
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
    fn partition_flags_are_forwarded_to_the_partition_process() {
        let t = T::parse_from([
            "t",
            "--kernel=/k",
            "--mem=1G",
            "--vcpus=2",
            "--display=1280x800",
            "--name=work",
        ]);
        let args = forwarded_args(&t.run);
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
        assert_eq!(r.name, "work");
        assert_eq!(r.cmdline, vmm_core::cli::DEFAULT_CMDLINE);
    }
}
