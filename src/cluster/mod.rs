//! The fleet: many mcpflip instances in front of the same slots that flip and
//! drain as one, coordinated through etcd.
//!
//! `etcd` is the client (etcd's JSON gateway over hyper and rustls).

pub mod etcd;
