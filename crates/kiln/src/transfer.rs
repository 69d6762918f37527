//! Pull and push progress: a bar per blob on a terminal, a line per blob otherwise.

use kiln_oci::Digest;
use kiln_registry::{ProgressFn, Transfer};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bar width in cells.
const BAR: usize = 30;
/// Least time between two redraws of the bars.
const REDRAW: Duration = Duration::from_millis(100);

struct Row {
    size: u64,
    done: u64,
    upload: bool,
    how: Option<&'static str>,
}

#[derive(Default)]
struct Bars {
    order: Vec<Digest>,
    rows: HashMap<Digest, Row>,
    drawn: usize,
    last: Option<Instant>,
}

/// A progress receiver for `kiln pull`/`push` writing to standard error: bars redrawn in place
/// when it is a terminal, one line when a blob starts and one when it is done otherwise.
pub fn display() -> ProgressFn {
    let tty = std::io::stderr().is_terminal();
    let bars = Mutex::new(Bars::default());
    Arc::new(move |t: Transfer<'_>| {
        let Ok(mut b) = bars.lock() else { return };
        if tty {
            b.update(t);
        } else {
            plain(t);
        }
    })
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

fn plain(t: Transfer<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = match t {
        Transfer::Start {
            digest,
            size,
            upload,
        } => writeln!(
            err,
            "{}: {} {}",
            short(digest),
            if upload { "uploading" } else { "downloading" },
            crate::images::human_size(size)
        ),
        Transfer::Done { digest, how } => writeln!(err, "{}: {how}", short(digest)),
        Transfer::Progress { .. } => Ok(()),
    };
}

impl Bars {
    fn update(&mut self, t: Transfer<'_>) {
        let force = match t {
            Transfer::Start {
                digest,
                size,
                upload,
            } => {
                if !self.rows.contains_key(digest) {
                    self.order.push(digest.clone());
                }
                self.rows.insert(
                    digest.clone(),
                    Row {
                        size,
                        done: 0,
                        upload,
                        how: None,
                    },
                );
                true
            }
            Transfer::Progress { digest, done } => {
                if let Some(r) = self.rows.get_mut(digest) {
                    r.done = done;
                }
                false
            }
            Transfer::Done { digest, how } => {
                if !self.rows.contains_key(digest) {
                    self.order.push(digest.clone());
                }
                let row = self.rows.entry(digest.clone()).or_insert(Row {
                    size: 0,
                    done: 0,
                    upload: false,
                    how: None,
                });
                row.done = row.size;
                row.how = Some(how);
                true
            }
        };
        if force || self.last.is_none_or(|l| l.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let mut out = String::new();
        if self.drawn > 0 {
            // Back to the first bar drawn last time.
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for d in &self.order {
            let r = &self.rows[d];
            let line = match r.how {
                Some(how) if r.size == 0 => format!("{}: {how}", short(d)),
                _ => {
                    let pct = (r.done.min(r.size) * 100)
                        .checked_div(r.size)
                        .unwrap_or(100);
                    let filled = BAR * pct as usize / 100;
                    format!(
                        "{}: [{}{}] {:>3}% {} / {}{}",
                        short(d),
                        "=".repeat(filled),
                        " ".repeat(BAR - filled),
                        pct,
                        crate::images::human_size(r.done.min(r.size)),
                        crate::images::human_size(r.size),
                        match (r.how, r.upload) {
                            (Some(how), _) => format!("  {how}"),
                            (None, true) => "  uploading".into(),
                            (None, false) => "  downloading".into(),
                        }
                    )
                }
            };
            out.push_str(&format!("\r\x1b[2K{line}\n"));
        }
        self.drawn = self.order.len();
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }
}
