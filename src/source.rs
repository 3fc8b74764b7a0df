//! Where route resources come from. Each source produces the same thing: a list of
//! WebSocketRoute objects (and problems) for the compile step.

pub mod file;
pub mod kube;
pub mod local;
