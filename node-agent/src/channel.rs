//! The one rule of the agent's watch channels: a receiver wakes for a change,
//! not for the same value sent again.

use tokio::sync::watch;

/// Send `value` on `tx` only if it differs from what `tx` holds; true if it
/// was sent.
pub fn send_if_changed<T: PartialEq + Clone>(tx: &watch::Sender<T>, value: &T) -> bool {
    tx.send_if_modified(|current| {
        if current == value {
            return false;
        }
        current.clone_from(value);
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_value_again_wakes_no_receiver() {
        let (tx, mut rx) = watch::channel(1);
        assert!(!send_if_changed(&tx, &1));
        assert!(!rx.has_changed().expect("open"));
        assert!(send_if_changed(&tx, &2));
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), 2);
    }
}
