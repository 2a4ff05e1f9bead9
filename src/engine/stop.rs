//! Stop requests: SIGTERM (what ECS sends when a task is stopped, two minutes before a Fargate
//! Spot interruption, and what `docker stop` and a scheduler's timeout send) and SIGINT (Ctrl-C).
//! The first makes the engine start no new stage and give running stages `run.shutdown_grace`
//! before it cancels them and records the run; a second exits at once.

use tokio::sync::watch;

/// Where a stop request arrives: the signal's number once one has.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<Option<i32>>);

/// SIGINT's number.
pub const SIGINT: i32 = 2;
/// SIGTERM's number.
pub const SIGTERM: i32 = 15;

/// A signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

impl Stop {
    /// Listens for SIGTERM and SIGINT (on the current tokio runtime). The second signal ends
    /// the process at once with its exit code (143 or 130).
    pub fn on_signals() -> std::io::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = watch::channel(None);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            let mut seen = false;
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => SIGTERM,
                    _ = int.recv() => SIGINT,
                };
                if seen {
                    eprintln!("mlpipe: second {}: exiting now", name(sig));
                    std::process::exit(128 + sig);
                }
                seen = true;
                let _ = tx.send(Some(sig));
            }
        });
        Ok(Stop(rx))
    }

    /// A stop request made by hand (tests).
    pub fn manual() -> (watch::Sender<Option<i32>>, Stop) {
        let (tx, rx) = watch::channel(None);
        (tx, Stop(rx))
    }

    /// The signal, if one has arrived.
    pub fn requested(&self) -> Option<i32> {
        *self.0.borrow()
    }

    /// Waits for a stop request; never returns if none can come.
    pub async fn wait(&mut self) -> i32 {
        loop {
            if let Some(s) = *self.0.borrow_and_update() {
                return s;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
