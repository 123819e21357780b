//! The eight Qubes trust labels and their exact colours.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A trust label. The order is the trust order: `Red` is the least trusted,
/// `Black` the most (as in Qubes OS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Red,
    Orange,
    Yellow,
    Green,
    Gray,
    Blue,
    Purple,
    Black,
}

impl Label {
    pub const ALL: [Label; 8] = [
        Label::Red,
        Label::Orange,
        Label::Yellow,
        Label::Green,
        Label::Gray,
        Label::Blue,
        Label::Purple,
        Label::Black,
    ];

    /// The border colour as `[r, g, b]`.
    pub const fn rgb(self) -> [u8; 3] {
        match self {
            Label::Red => [0xcc, 0x00, 0x00],
            Label::Orange => [0xf5, 0x79, 0x00],
            Label::Yellow => [0xed, 0xd4, 0x00],
            Label::Green => [0x73, 0xd2, 0x16],
            Label::Gray => [0x55, 0x55, 0x55],
            Label::Blue => [0x34, 0x65, 0xa4],
            Label::Purple => [0x75, 0x50, 0x7b],
            Label::Black => [0x00, 0x00, 0x00],
        }
    }

    /// The colour as `#rrggbb`.
    pub fn hex(self) -> String {
        let [r, g, b] = self.rgb();
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    pub const fn name(self) -> &'static str {
        match self {
            Label::Red => "red",
            Label::Orange => "orange",
            Label::Yellow => "yellow",
            Label::Green => "green",
            Label::Gray => "gray",
            Label::Blue => "blue",
            Label::Purple => "purple",
            Label::Black => "black",
        }
    }

    /// Trust rank, 0 (red) to 7 (black).
    pub fn trust(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown label `{0}`; labels are red, orange, yellow, green, gray, blue, purple, black")]
pub struct UnknownLabel(pub String);

impl FromStr for Label {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| UnknownLabel(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_the_exact_qubes_colours() {
        let expected = [
            ("red", "#cc0000"),
            ("orange", "#f57900"),
            ("yellow", "#edd400"),
            ("green", "#73d216"),
            ("gray", "#555555"),
            ("blue", "#3465a4"),
            ("purple", "#75507b"),
            ("black", "#000000"),
        ];
        for (name, hex) in expected {
            let label: Label = name.parse().unwrap();
            assert_eq!(label.hex(), hex, "{name}");
            assert_eq!(label.to_string(), name);
        }
    }

    #[test]
    fn red_is_least_and_black_most_trusted() {
        assert!(Label::Red < Label::Green);
        assert_eq!(Label::Red.trust(), 0);
        assert_eq!(Label::Black.trust(), 7);
    }

    #[test]
    fn unknown_label_is_rejected_with_the_list() {
        let err = "pink".parse::<Label>().unwrap_err();
        assert!(err.to_string().contains("pink"));
        assert!(err.to_string().contains("purple"));
    }
}
