//! Serial console panel: what each partition wrote to its 16550, bounded in size.

use egui::Ui;

use crate::app::model::LabelStyle;
use crate::app::PartitionSlot;

/// Bytes kept per partition; older output is dropped first.
pub const SERIAL_KEEP: usize = 256 * 1024;

/// A partition's console output as displayable text. Bytes come from the guest, so they
/// are decoded lossily and control characters other than newline are dropped.
#[derive(Debug, Default)]
pub struct SerialLog {
    text: String,
}

impl SerialLog {
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let decoded = String::from_utf8_lossy(bytes);
        self.text.extend(
            decoded
                .chars()
                .filter(|c| *c == '\n' || *c == '\t' || !c.is_control()),
        );
        if self.text.len() > SERIAL_KEEP {
            let mut cut = self.text.len() - SERIAL_KEEP;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

pub fn show(ui: &mut Ui, slots: &[PartitionSlot], selected: &mut usize) {
    ui.heading("Serial console");
    if slots.is_empty() {
        ui.label("No partitions.");
        return;
    }
    ui.horizontal_wrapped(|ui| {
        for (i, slot) in slots.iter().enumerate() {
            let info = slot.backend.info();
            let text = egui::RichText::new(format!("[{}]", info.name)).color(info.label.color());
            ui.selectable_value(selected, i, text);
        }
    });
    let Some(slot) = slots.get(*selected) else {
        *selected = 0;
        return;
    };
    egui::ScrollArea::vertical()
        .id_salt(("serial", *selected))
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.add(egui::Label::new(egui::RichText::new(slot.serial.text()).monospace()).wrap());
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_the_guest_are_dropped() {
        let mut log = SerialLog::default();
        log.push(b"ok\x1b[2J\r\nnext\x07\n");
        assert_eq!(log.text(), "ok[2J\nnext\n");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_trusted() {
        let mut log = SerialLog::default();
        log.push(&[b'a', 0xff, b'b']);
        assert_eq!(log.text(), "a\u{fffd}b");
    }

    #[test]
    fn output_is_bounded_keeping_the_newest() {
        let mut log = SerialLog::default();
        log.push(&vec![b'x'; SERIAL_KEEP]);
        log.push(b"tail");
        assert_eq!(log.text().len(), SERIAL_KEEP);
        assert!(log.text().ends_with("tail"));
    }
}
