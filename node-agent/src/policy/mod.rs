//! Pure policy decisions of the agent: the VRAM budget of each device.

pub mod budget;
