//! SIGINT and SIGTERM end long-running commands cleanly; SIGHUP reloads what a command can
//! reload (certificates) instead of ending it.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGINT or SIGTERM.
pub(crate) async fn wait_for_stop_signal() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("could not install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Calls `reload` on every SIGHUP from now on (must be called inside the runtime). From this
/// call, SIGHUP no longer ends the process.
pub(crate) fn reload_on_hangup(reload: impl Fn() + Send + 'static) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(
                "could not install the SIGHUP handler ({e}); SIGHUP will stop the process instead of reloading its certificates"
            );
            return;
        }
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload();
        }
    });
}

/// A shutdown signal that fires on SIGINT or SIGTERM (must be called inside the runtime).
pub(crate) fn shutdown_on_stop_signal() -> klio_client::Shutdown {
    let (trigger, shutdown) = klio_client::shutdown_channel();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("received stop signal, finishing");
        trigger.trigger();
    });
    shutdown
}
