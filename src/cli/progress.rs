//! Progress while applying: on a terminal, a live block with one line per
//! host showing its current step (redrawn in place); otherwise (a pipe, CI,
//! `--output json`) plain timestamped lines, one per step.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

pub struct Progress {
    live: bool,
    start: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (host, its latest step), in first-seen order.
    hosts: Vec<(String, String)>,
    /// Lines of the live block currently on screen.
    drawn: usize,
}

impl Progress {
    /// Live only when stderr is a terminal and `plain` is not asked for.
    pub fn new(plain: bool) -> Progress {
        Progress {
            live: !plain && std::io::stderr().is_terminal(),
            start: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// One step: `[host] message`, or a message about the whole run.
    pub fn line(&self, line: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        if !self.live {
            eprintln!("{elapsed:>6.1}s {line}");
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        // Move to the top of the block and clear it.
        if st.drawn > 0 {
            let _ = write!(err, "\x1b[{}A\x1b[J", st.drawn);
        }
        match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((host, msg)) => {
                let msg = format!("{msg} ({elapsed:.1}s)");
                match st.hosts.iter_mut().find(|(h, _)| h == host) {
                    Some(slot) => slot.1 = msg,
                    None => st.hosts.push((host.to_string(), msg)),
                }
            }
            None => {
                let _ = writeln!(err, "{line}");
            }
        }
        let width = st.hosts.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
        for (h, msg) in &st.hosts {
            let _ = writeln!(err, "  {h:<width$}  {msg}");
        }
        st.drawn = st.hosts.len();
    }
}
