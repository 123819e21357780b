//! Opening the desktop window: renderer choice with fallback, remembered window state.

use std::process::ExitCode;

use crate::display::software::Pattern;

use super::backend::{PartitionBackend, SoftwareBackend};
use super::model::{Label, PartitionInfo, SourceKind};
use super::BulkheadApp;

/// Environment variable forcing a renderer (`wgpu` or `glow`).
pub const RENDERER_ENV: &str = "BULKHEAD_RENDERER";
/// Environment variable naming a file written once the first frame was presented.
pub const FIRST_FRAME_ENV: &str = "BULKHEAD_FIRST_FRAME_FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RendererChoice {
    Wgpu,
    Glow,
}

/// wgpu when a hardware adapter exists; glow (fast on llvmpipe) when the only adapter is
/// a CPU one such as lavapipe, or none at all.
pub fn choose_renderer() -> (RendererChoice, String) {
    match std::env::var(RENDERER_ENV).as_deref() {
        Ok("glow") => return (RendererChoice::Glow, format!("glow ({RENDERER_ENV}=glow)")),
        Ok("wgpu") => return (RendererChoice::Wgpu, format!("wgpu ({RENDERER_ENV}=wgpu)")),
        _ => {}
    }
    let instance = eframe::wgpu::Instance::new(
        eframe::wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
    );
    let options = eframe::wgpu::RequestAdapterOptions::default();
    match pollster::block_on(instance.request_adapter(&options)) {
        Ok(adapter) => {
            let info = adapter.get_info();
            if info.device_type == eframe::wgpu::DeviceType::Cpu {
                (
                    RendererChoice::Glow,
                    format!("glow (wgpu adapter `{}` is software)", info.name),
                )
            } else {
                (RendererChoice::Wgpu, format!("wgpu on `{}`", info.name))
            }
        }
        Err(e) => (RendererChoice::Glow, format!("glow (no wgpu adapter: {e})")),
    }
}

/// A partition as the policy resolved it, in the app's terms.
pub fn info_from_spec(spec: &isolation_policy::PartitionSpec) -> PartitionInfo {
    PartitionInfo {
        name: spec.name.clone(),
        label: spec.label.parse::<Label>().unwrap_or(Label::Gray),
        kind: spec.kind.name().to_string(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        display: (spec.display_width, spec.display_height),
        source: SourceKind::Partition,
    }
}

/// The configured partitions, or a clear reason (logged) and none.
pub fn configured_partitions(dir: &std::path::Path) -> Vec<PartitionInfo> {
    match isolation_policy::Policy::load(dir) {
        Ok((policy, _)) => policy.specs().iter().map(info_from_spec).collect(),
        Err(e) => {
            tracing::warn!("policy {} not loaded: {e}", dir.display());
            Vec::new()
        }
    }
}

/// The partitions shown until the supervisor runs real ones: one software framebuffer
/// per configured partition (or three defaults), each labelled as not a partition.
pub fn software_backends(configured: Vec<PartitionInfo>) -> Vec<Box<dyn PartitionBackend>> {
    let defaults = || {
        [
            ("browser", Label::Red),
            ("mail", Label::Yellow),
            ("work", Label::Blue),
        ]
        .into_iter()
        .map(|(name, label)| PartitionInfo {
            name: name.into(),
            label,
            kind: "app".into(),
            memory_mib: 512,
            vcpus: 1,
            display: (1024, 768),
            source: SourceKind::SoftwareFramebuffer,
        })
        .collect()
    };
    let infos = if configured.is_empty() {
        defaults()
    } else {
        configured
    };
    infos
        .into_iter()
        .map(|info| {
            let mut backend = SoftwareBackend::new(info, Pattern::TestCard);
            // Software sources are free to run and show the app working at once.
            if let Err(e) = backend.start() {
                tracing::warn!("{e}");
            }
            Box::new(backend) as Box<dyn PartitionBackend>
        })
        .collect()
}

/// Opens the desktop app over `backends` (the supervisor passes real partitions).
/// `host_notice` is what this host cannot do (no hardware virtualization, no access to
/// /dev/kvm), shown in the window, not only in the log.
pub fn run_desktop_with(
    backends: impl FnOnce() -> (
        Vec<Box<dyn PartitionBackend>>,
        Option<Box<dyn super::PartitionSource>>,
    ),
    host_notice: Option<String>,
) -> ExitCode {
    let (renderer, why) = choose_renderer();
    tracing::info!("renderer: {why}");
    let options = eframe::NativeOptions {
        renderer: match renderer {
            RendererChoice::Wgpu => eframe::Renderer::Wgpu,
            RendererChoice::Glow => eframe::Renderer::Glow,
        },
        viewport: egui::ViewportBuilder::default()
            .with_title("Bulkhead")
            .with_app_id("bulkhead")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0]),
        persist_window: true,
        ..Default::default()
    };
    let marker = std::env::var_os(FIRST_FRAME_ENV).map(std::path::PathBuf::from);
    let result = eframe::run_native(
        "bulkhead",
        options,
        Box::new(move |cc| {
            let (backends, source) = backends();
            let mut app = BulkheadApp::new(backends)
                .with_creation_context(cc)
                .with_first_frame_marker(marker);
            // Read from wherever the policy is; saved only into the user's directory.
            app.source = source;
            app.policy = super::policy_editor::PolicyEditor::open_saving_to(
                &isolation_policy::default_policy_dir(),
                isolation_policy::policy_save_dir(),
            );
            let audit_dir = super::audit_log::default_audit_dir();
            if let Some(dir) = &audit_dir {
                app.audit = super::audit_log::AuditPanel::open(dir);
            }
            app.clipboard = super::clipboard::SecureClipboard::new(
                Some(isolation_policy::default_policy_dir()),
                audit_dir.as_deref(),
            );
            if let Some(cap) = super::clipboard::SecureClipboard::max_bytes_from_env() {
                app.clipboard = app.clipboard.with_max_bytes(cap);
            }
            app.renderer = why;
            app.host_notice = host_notice;
            Ok(Box::new(app))
        }),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if renderer == RendererChoice::Wgpu => {
            tracing::warn!("wgpu failed to start ({e}); starting again with glow");
            rerun_with_glow()
        }
        Err(e) => {
            eprintln!("bulkhead: cannot open the window: {e}");
            ExitCode::FAILURE
        }
    }
}

/// winit cannot make a second event loop in one process, so the glow attempt is a fresh
/// process with the same arguments.
fn rerun_with_glow() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("bulkhead: cannot find own executable to retry with glow: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(RENDERER_ENV, "glow")
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bulkhead: retry with glow failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}
