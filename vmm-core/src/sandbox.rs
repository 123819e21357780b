//! Confining a partition process before guest code runs.
