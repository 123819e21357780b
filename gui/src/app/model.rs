//! What the app knows about a partition, independent of where it runs.

use std::time::Duration;

use egui::Color32;

/// The trust labels come from the policy crate (one definition of the exact colours);
/// the app only adds how to paint them.
pub use isolation_policy::Label;

/// How the app paints a label.
pub trait LabelStyle {
    fn color(self) -> Color32;
    /// Text colour readable on top of the label colour (title bars).
    fn text_color(self) -> Color32;
}

impl LabelStyle for Label {
    fn color(self) -> Color32 {
        let [r, g, b] = self.rgb();
        Color32::from_rgb(r, g, b)
    }

    fn text_color(self) -> Color32 {
        match self {
            Label::Yellow | Label::Green | Label::Orange => Color32::BLACK,
            _ => Color32::WHITE,
        }
    }
}

/// Where a display source's pixels come from. A software source is never a partition,
/// and everything that shows one says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A KVM partition process.
    Partition,
    /// Pixels drawn by the host (tests, hosts without hardware virtualization).
    SoftwareFramebuffer,
}

impl SourceKind {
    pub fn disclaimer(self) -> Option<&'static str> {
        match self {
            SourceKind::Partition => None,
            SourceKind::SoftwareFramebuffer => Some("software framebuffer — not a partition"),
        }
    }
}

/// The badge a partition with a reduced sandbox wears ("sandbox reduced: no Landlock"),
/// from what its process reported lacking; `None` for the full sandbox.
pub fn sandbox_badge(gaps: &[String]) -> Option<String> {
    if gaps.is_empty() {
        return None;
    }
    Some(format!("sandbox reduced: {}", gaps.join(", ")))
}

/// A partition as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionInfo {
    pub name: String,
    pub label: Label,
    /// What it is for, e.g. "browser", "mail", "work".
    pub kind: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub display: (u32, u32),
    pub source: SourceKind,
}

/// Lifecycle state as the launcher shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    Stopped,
    /// Getting ready to boot, e.g. building the partition's template.
    Preparing {
        what: String,
    },
    Booting,
    /// The guest is up; its app has not shown a window yet.
    Starting {
        app: String,
    },
    Running,
    Paused,
    Crashed {
        reason: String,
    },
}

impl PartitionState {
    pub fn word(&self) -> &'static str {
        match self {
            PartitionState::Stopped => "stopped",
            PartitionState::Preparing { .. } => "preparing",
            PartitionState::Booting => "booting",
            PartitionState::Starting { .. } => "starting",
            PartitionState::Running => "running",
            PartitionState::Paused => "paused",
            PartitionState::Crashed { .. } => "crashed",
        }
    }

    /// Has a framebuffer worth showing.
    pub fn has_display(&self) -> bool {
        matches!(
            self,
            PartitionState::Booting
                | PartitionState::Starting { .. }
                | PartitionState::Running
                | PartitionState::Paused
        )
    }

    pub fn can_start(&self) -> bool {
        matches!(
            self,
            PartitionState::Stopped | PartitionState::Crashed { .. }
        )
    }
}

/// Resource figures for the launcher.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartitionStats {
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Percent of one host CPU over the last second.
    pub cpu_percent: f32,
    pub uptime: Duration,
    /// What the guest's memory balloon holds, MiB (`None`: not reported).
    pub balloon_mib: Option<u32>,
}

/// Host memory of a partition, with its balloon when inflated: `612 MiB (balloon 400
/// MiB)`, else `612 MiB`.
pub fn memory_text(mib: u64, balloon_mib: Option<u32>) -> String {
    match balloon_mib {
        Some(b) if b > 0 => format!("{mib} MiB (balloon {b} MiB)"),
        _ => format!("{mib} MiB"),
    }
}

/// `1h 02m`, `3m 07s`, `12s`.
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_colours_are_the_qubes_colours() {
        assert_eq!(Label::Red.color(), Color32::from_hex("#cc0000").unwrap());
        assert_eq!(Label::Orange.color(), Color32::from_hex("#f57900").unwrap());
        assert_eq!(Label::Yellow.color(), Color32::from_hex("#edd400").unwrap());
        assert_eq!(Label::Green.color(), Color32::from_hex("#73d216").unwrap());
        assert_eq!(Label::Gray.color(), Color32::from_hex("#555555").unwrap());
        assert_eq!(Label::Blue.color(), Color32::from_hex("#3465a4").unwrap());
        assert_eq!(Label::Purple.color(), Color32::from_hex("#75507b").unwrap());
        assert_eq!(Label::Black.color(), Color32::from_hex("#000000").unwrap());
    }

    #[test]
    fn memory_shows_the_balloon_only_when_it_holds_something() {
        assert_eq!(memory_text(612, Some(400)), "612 MiB (balloon 400 MiB)");
        assert_eq!(memory_text(612, Some(0)), "612 MiB");
        assert_eq!(memory_text(612, None), "612 MiB");
    }

    #[test]
    fn label_names_round_trip() {
        for l in Label::ALL {
            assert_eq!(l.name().parse::<Label>().ok(), Some(l));
        }
        assert_eq!("pink".parse::<Label>().ok(), None);
    }

    #[test]
    fn uptime_reads_like_a_person_would_write_it() {
        assert_eq!(format_uptime(Duration::from_secs(12)), "12s");
        assert_eq!(format_uptime(Duration::from_secs(187)), "3m 07s");
        assert_eq!(format_uptime(Duration::from_secs(3720)), "1h 02m");
    }
}
