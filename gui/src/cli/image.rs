//! `bulkhead image …`: the default guest image in the cache.

use std::process::ExitCode;

use bulkhead_supervisor::guest_image;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the default guest image into the cache (reuses what is there).
    Build,
    /// Print where the default guest image lives and whether it is built.
    Path,
}

pub fn run(cmd: ImageCommand) -> ExitCode {
    let dir = guest_image::default_image_dir();
    match cmd {
        ImageCommand::Build => {
            match guest_image::build_default(&dir, &mut |s| eprintln!("bulkhead: {s}")) {
                Ok(image) => {
                    println!("kernel {}", image.kernel.display());
                    println!("bzimage {}", image.bzimage.display());
                    println!("initrd {}", image.initrd.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bulkhead: building the guest image: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ImageCommand::Path => match guest_image::locate(&dir) {
            Some(image) => {
                println!("{} (built, kernel {})", dir.display(), image.kernel_version);
                ExitCode::SUCCESS
            }
            None => {
                println!("{} (not built: run `bulkhead image build`)", dir.display());
                ExitCode::from(1)
            }
        },
    }
}
