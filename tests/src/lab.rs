//! The lab runner (filled in below).
