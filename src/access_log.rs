//! The access log: one line per request on stdout, as text or JSON, made in Pingora's
//! `logging` phase (which runs for responses sluice wrote itself too) and written by a thread of
//! its own.

use crate::config::{AccessLog, CallerInLog};
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one request's line says.
pub struct Entry {
    pub time: SystemTime,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub caller: Option<Vec<u8>>,
    pub decision: &'static str,
    pub status: u16,
    /// From sending the request upstream to its response head; `None` when nothing was sent.
    pub upstream: Option<Duration>,
    pub total: Duration,
}

impl Entry {
    /// The line, newline included, in `format` with callers shown as `callers` says.
    pub fn line(&self, format: AccessLog, callers: CallerInLog) -> Option<String> {
        let caller = self.caller.as_deref().map(|c| shown(c, callers));
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let time = rfc3339_millis(self.time);
        match format {
            AccessLog::Off => None,
            AccessLog::Json => {
                let line = json!({
                    "time": time,
                    "method": self.method,
                    "path": self.path,
                    "route": self.route,
                    "caller": caller,
                    "decision": self.decision,
                    "status": self.status,
                    "upstream_ms": self.upstream.map(ms),
                    "total_ms": ms(self.total),
                });
                Some(format!("{line}\n"))
            }
            AccessLog::Text => Some(format!(
                "{time} {} {} route={} caller={} decision={} status={} upstream_ms={} total_ms={}\n",
                self.method,
                self.path,
                self.route.as_deref().unwrap_or("-"),
                caller.as_deref().map_or_else(|| "-".to_string(), |c| format!("{c:?}")),
                self.decision,
                self.status,
                self.upstream.map_or_else(|| "-".to_string(), |d| ms(d).to_string()),
                ms(self.total),
            )),
        }
    }
}

/// Lines waiting for the writer; past this, new lines are dropped and counted.
const QUEUE: usize = 65_536;

struct Writer {
    lines: std::sync::mpsc::SyncSender<String>,
    dropped: AtomicU64,
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// The writer thread, started on the first line: the request path only hands a line over
/// (no lock on stdout, no system call); the thread writes what is queued in large writes and
/// flushes whenever the queue runs dry.
fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let (lines, queue) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
                while let Ok(line) = queue.recv() {
                    let mut n = 1;
                    let mut result = out.write_all(line.as_bytes());
                    while let (Ok(()), Ok(more)) = (&result, queue.try_recv()) {
                        result = out.write_all(more.as_bytes());
                        n += 1;
                    }
                    if let Err(e) = result.and_then(|()| out.flush()) {
                        log::debug!("access log: {e}");
                    }
                    count.fetch_add(n, Ordering::Release);
                }
            });
        if let Err(e) = spawned {
            log::error!("access log: cannot start its writer thread: {e}");
        }
        Writer {
            lines,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            written,
        }
    })
}

/// Queues `line` for stdout; when the writer is behind by 65,536 lines the line is dropped
/// and counted ([`dropped`]), so a slow stdout never slows requests.
pub fn write(line: String) {
    let w = writer();
    match w.lines.try_send(line) {
        Ok(()) => w.queued.fetch_add(1, Ordering::Release),
        Err(_) => w.dropped.fetch_add(1, Ordering::Relaxed),
    };
}

/// Lines dropped because the writer was behind.
pub fn dropped() -> u64 {
    WRITER
        .get()
        .map_or(0, |w| w.dropped.load(Ordering::Relaxed))
}

/// Waits (at most `limit`) until every queued line is on stdout: before the process exits.
pub fn flush(limit: std::time::Duration) {
    let Some(w) = WRITER.get() else {
        return;
    };
    let start = std::time::Instant::now();
    while w.written.load(Ordering::Acquire) < w.queued.load(Ordering::Acquire)
        && start.elapsed() < limit
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A caller as every log line shows it: hashed (the default) or as it is.
fn shown(caller: &[u8], mode: CallerInLog) -> String {
    match mode {
        CallerInLog::Hashed => format!("{:016x}", fnv1a(caller)),
        CallerInLog::Plain => String::from_utf8_lossy(caller).into_owned(),
    }
}

/// A caller (or `-` for an anonymous one) in the form the access log writes it, for any other
/// log line that must name one: no log shows a caller more plainly than the access log does.
pub fn shown_caller(caller: Option<&[u8]>, mode: CallerInLog) -> String {
    caller.map_or_else(|| "-".to_string(), |c| shown(c, mode))
}

/// 64-bit FNV-1a: stable across runs and versions, so hashed callers correlate across lines
/// and sidecars. It pseudonymises, it does not hide: short identities can be found by trying.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `2026-11-29T07:30:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_938_600_123);
        assert_eq!(rfc3339_millis(t), "2026-11-29T07:50:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_in_both_formats() {
        let e = Entry {
            time: UNIX_EPOCH,
            method: "GET".into(),
            path: "/api/x".into(),
            route: Some("api".into()),
            caller: Some(b"alice".to_vec()),
            decision: "admitted",
            status: 200,
            upstream: Some(Duration::from_micros(1500)),
            total: Duration::from_micros(2250),
        };
        let json: serde_json::Value =
            serde_json::from_str(&e.line(AccessLog::Json, CallerInLog::Plain).unwrap()).unwrap();
        assert_eq!(json["caller"], "alice");
        assert_eq!(json["upstream_ms"], 1.5);
        assert_eq!(json["total_ms"], 2.25);
        let text = e.line(AccessLog::Text, CallerInLog::Hashed).unwrap();
        assert_eq!(
            text,
            format!("1970-01-01T00:00:00.000Z GET /api/x route=api caller=\"{:016x}\" decision=admitted status=200 upstream_ms=1.5 total_ms=2.25\n", fnv1a(b"alice"))
        );
        assert!(e.line(AccessLog::Off, CallerInLog::Plain).is_none());
    }
}
