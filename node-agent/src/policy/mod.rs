//! Pure policy decisions of the agent: the VRAM budget and ledger of each
//! device, the admission gate (interval, duty cycle, batch size), adaptive
//! back-off, and the process priority.

pub mod adaptive;
pub mod budget;
pub mod ledger;
pub mod priority;
pub mod throttle;
