//! The node's model pipelines: candle models behind the serving layer's
//! `Backend`, the throttle gate as its `Admission`, the weighted split as its
//! version selector, and the manager that keeps them equal to what the node
//! must serve.

pub mod admission;
pub mod backend;
pub mod manager;
pub mod split;
