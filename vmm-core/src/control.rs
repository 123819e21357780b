//! The control protocol between the supervisor and a partition process.
