//! Partitions and the rules between them, as data.
