//! Panics anywhere in the simulated world (tokio swallows panics of spawned tasks, so a hook
//! records them) fail the run.

use std::sync::{Mutex, Once};

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

pub fn install() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(info.to_string());
            if std::env::var_os("RTGT_SIM_PANIC_BACKTRACE").is_some() {
                previous(info);
            }
        }));
    });
}

pub fn clear() {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

pub fn first() -> Option<String> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).first().cloned()
}
