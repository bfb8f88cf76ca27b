//! Panics anywhere in the simulated world (tokio swallows panics of spawned tasks, so a hook
//! records them) fail the run. A run's hosts all live on its thread, and seeds run on threads
//! of their own, so each thread keeps its own record.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}
static HOOK: Once = Once::new();

pub fn install() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic while the record is borrowed (in `first` or `clear`) is left out rather
            // than turned into a second panic.
            let _ = PANICS.try_with(|p| p.try_borrow_mut().map(|mut p| p.push(info.to_string())));
            if std::env::var_os("RTGT_SIM_PANIC_BACKTRACE").is_some() {
                previous(info);
            }
        }));
    });
}

pub fn clear() {
    PANICS.with(|p| p.borrow_mut().clear());
}

pub fn first() -> Option<String> {
    PANICS.with(|p| p.borrow().first().cloned())
}
