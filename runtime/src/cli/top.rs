//! `ferrule top CONFIG`: a live terminal view of a running gateway, for
//! someone on site (or over SSH, at 80×24). It reads the live status file
//! the gateway rewrites every `[runtime] status_interval_ms`, never a
//! socket: the gateway listens on nothing.
//!
//! Keys: 1–4 or Tab switch views (drivers, values, link and queue,
//! system), ↑/↓ and PgUp/PgDn scroll, q or Esc quits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ferrule::config::Config;
use ferrule::reading::{Quality, Reading, Value, now_ms};
use ferrule::telemetry::status::{self, LiveStatus};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Tabs};

/// The views, in key order.
const VIEWS: [&str; 4] = ["1 drivers", "2 values", "3 link & queue", "4 system"];

/// A driver's last batch as the status file holds it.
#[derive(serde::Deserialize)]
struct Batch {
    readings: Vec<Reading>,
}

struct App {
    path: PathBuf,
    view: usize,
    scroll: usize,
    status: Result<LiveStatus, String>,
    /// Polls per second of each driver, from the last two files.
    rates: HashMap<String, f64>,
    /// The previous file's time and each driver's polls.
    previous: Option<(u64, HashMap<String, u64>)>,
}

impl App {
    fn refresh(&mut self) {
        self.status = status::read(&self.path);
        let Ok(s) = &self.status else {
            return;
        };
        let polls: HashMap<String, u64> = (s.snapshot.drivers.iter())
            .map(|d| (d.name.clone(), d.polls_ok + d.polls_failed))
            .collect();
        if let Some((at, before)) = &self.previous
            && s.snapshot.ts_ms > *at
        {
            let secs = (s.snapshot.ts_ms - at) as f64 / 1000.0;
            self.rates = (polls.iter())
                .filter_map(|(name, n)| {
                    let was = before.get(name)?;
                    Some((name.clone(), n.saturating_sub(*was) as f64 / secs))
                })
                .collect();
        }
        if self
            .previous
            .as_ref()
            .is_none_or(|(at, _)| s.snapshot.ts_ms != *at)
        {
            self.previous = Some((s.snapshot.ts_ms, polls));
        }
    }
}

pub fn run(config: &Config) -> anyhow::Result<()> {
    let path = ferrule::gateway::status_path(config);
    if config.runtime.status_interval_ms == 0 {
        anyhow::bail!(
            "{}: [runtime] status_interval_ms = 0: the gateway writes no live status for ferrule top to show",
            config.source.display()
        );
    }
    let mut app = App {
        path,
        view: 0,
        scroll: 0,
        status: Err(String::new()),
        rates: HashMap::new(),
        previous: None,
    };
    app.refresh();
    let refresh = Duration::from_millis(config.runtime.status_interval_ms.clamp(250, 5000));
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut last = std::time::Instant::now();
        loop {
            terminal.draw(|frame| draw(frame, &app))?;
            let wait = refresh.saturating_sub(last.elapsed());
            if event::poll(wait)? {
                if let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    match key.code {
                        _ if ctrl_c => return Ok(()),
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char(c @ '1'..='4') => {
                            app.view = usize::from(c as u8 - b'1');
                            app.scroll = 0;
                        }
                        KeyCode::Tab | KeyCode::Right => {
                            app.view = (app.view + 1) % VIEWS.len();
                            app.scroll = 0;
                        }
                        KeyCode::BackTab | KeyCode::Left => {
                            app.view = (app.view + VIEWS.len() - 1) % VIEWS.len();
                            app.scroll = 0;
                        }
                        KeyCode::Down => app.scroll += 1,
                        KeyCode::Up => app.scroll = app.scroll.saturating_sub(1),
                        KeyCode::PageDown => app.scroll += 10,
                        KeyCode::PageUp => app.scroll = app.scroll.saturating_sub(10),
                        _ => {}
                    }
                }
                continue;
            }
            app.refresh();
            last = std::time::Instant::now();
        }
    })();
    ratatui::restore();
    result
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn draw(frame: &mut Frame, app: &App) {
    let [head, tabs, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Tabs::new(VIEWS)
            .select(app.view)
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    frame.render_widget(
        Paragraph::new("q quit · 1-4/Tab views · ↑↓ PgUp PgDn scroll")
            .style(Style::new().fg(Color::DarkGray)),
        foot,
    );
    let s = match &app.status {
        Ok(s) => s,
        Err(e) => {
            frame.render_widget(
                Paragraph::new("ferrule top: no live status").style(Style::new().fg(Color::Red)),
                head,
            );
            frame.render_widget(
                Paragraph::new(vec![
                    Line::from(e.clone()),
                    Line::from(""),
                    Line::from("Is the gateway running? `ferrule run` rewrites this file every"),
                    Line::from("[runtime] status_interval_ms ([runtime] status_file names it)."),
                ])
                .wrap(ratatui::widgets::Wrap { trim: false }),
                body,
            );
            return;
        }
    };
    let stale = now_ms().saturating_sub(s.snapshot.ts_ms) > 3 * s.interval_ms.max(1000);
    let (state, colour) = if s.stopped {
        ("STOPPED".to_string(), Color::Red)
    } else if stale {
        (
            format!("STALE {} (not running?)", age(s.snapshot.ts_ms)),
            Color::Red,
        )
    } else {
        ("live".to_string(), Color::Green)
    };
    let uptime = s.snapshot.uptime_s;
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                format!("{} ", s.snapshot.gateway),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "ferrule {} · pid {} · up {}h{:02}m · ",
                s.snapshot.software.version,
                s.pid,
                uptime / 3600,
                uptime / 60 % 60
            )),
            Span::styled(state, Style::new().fg(colour)),
        ])),
        head,
    );
    match app.view {
        0 => drivers(frame, body, app, s),
        1 => values(frame, body, app, s),
        2 => link(frame, body, app, s),
        _ => system(frame, body, app, s),
    }
}

fn drivers(frame: &mut Frame, area: Rect, app: &App, s: &LiveStatus) {
    let rows = s.snapshot.drivers.iter().skip(app.scroll).map(|d| {
        let (device, colour) = match &d.device {
            Some(dev) if dev.connected => ("connected", Color::Green),
            Some(_) => ("DISCONNECTED", Color::Red),
            None => ("-", Color::Reset),
        };
        let failing = d.polls_failed > 0 && d.last_error.is_some();
        Row::new(vec![
            Cell::from(d.name.clone()),
            Cell::from(device).style(Style::new().fg(colour)),
            Cell::from(
                app.rates
                    .get(&d.name)
                    .map_or("-".to_string(), |r| format!("{r:.1}")),
            ),
            Cell::from(d.polls_ok.to_string()),
            Cell::from(d.polls_failed.to_string()).style(if failing {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            }),
            Cell::from(d.readings.to_string()),
            Cell::from(d.last_error.clone().unwrap_or_default()),
        ])
    });
    let title = format!(
        " drivers: {} running{} ",
        s.snapshot.drivers.len(),
        s.snapshot
            .config
            .as_ref()
            .map(|c| match c.not_started.len() {
                0 => String::new(),
                n => format!(", {n} NOT STARTED (view 4)"),
            })
            .unwrap_or_default()
    );
    let columns = [
        ("driver", Constraint::Length(14)),
        ("device", Constraint::Length(12)),
        ("polls/s", Constraint::Length(7)),
        ("ok", Constraint::Length(8)),
        ("failed", Constraint::Length(7)),
        ("readings", Constraint::Length(9)),
        ("last error", Constraint::Min(10)),
    ];
    frame.render_widget(table(rows, &columns, title), area);
}

/// A bordered table with a bold header row.
fn table<'a>(
    rows: impl IntoIterator<Item = Row<'a>>,
    columns: &[(&'a str, Constraint)],
    title: String,
) -> Table<'a> {
    Table::new(rows, columns.iter().map(|(_, width)| *width))
        .header(
            Row::new(columns.iter().map(|(name, _)| *name))
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(title))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Float(f) => format!("{f:.4}"),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Text(t) => t.chars().take(40).collect(),
        Value::Bytes(b) => format!("{} bytes", b.len()),
    }
}

fn values(frame: &mut Frame, area: Rect, app: &App, s: &LiveStatus) {
    let mut rows: Vec<Row> = Vec::new();
    for last in &s.last {
        let Some(batch) = &last.batch else {
            let why = if s.values_withheld.is_some() {
                "values withheld (see below)"
            } else if last.too_large {
                "last batch too large to show"
            } else {
                "no batch yet"
            };
            rows.push(Row::new(vec![
                Cell::from(last.driver.clone()),
                Cell::from(why).style(Style::new().fg(Color::DarkGray)),
            ]));
            continue;
        };
        let Ok(batch) = serde_json::from_str::<Batch>(batch.get()) else {
            rows.push(Row::new(vec![
                Cell::from(last.driver.clone()),
                Cell::from("unreadable batch"),
            ]));
            continue;
        };
        for r in batch.readings {
            let quality = match r.quality {
                Quality::Good => Cell::from("good"),
                Quality::Uncertain => Cell::from("uncertain").style(Style::new().fg(Color::Yellow)),
                Quality::Bad => Cell::from("BAD").style(Style::new().fg(Color::Red)),
            };
            rows.push(Row::new(vec![
                Cell::from(last.driver.clone()),
                Cell::from(r.channel.clone()),
                Cell::from(value_text(&r.value)),
                Cell::from(r.unit.clone().unwrap_or_default()),
                quality,
                Cell::from(age(r.ts_ns / 1_000_000)),
            ]));
        }
    }
    let mut title = format!(" last values: {} readings ", rows.len());
    if let Some(why) = &s.values_withheld {
        title = format!(" {why} ");
    }
    let columns = [
        ("driver", Constraint::Length(14)),
        ("channel", Constraint::Length(20)),
        ("value", Constraint::Length(16)),
        ("unit", Constraint::Length(8)),
        ("quality", Constraint::Length(9)),
        ("age", Constraint::Min(6)),
    ];
    frame.render_widget(
        table(rows.into_iter().skip(app.scroll), &columns, title),
        area,
    );
}

fn lines_view(frame: &mut Frame, area: Rect, app: &App, title: &str, lines: Vec<Line<'static>>) {
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .scroll((u16::try_from(app.scroll).unwrap_or(u16::MAX), 0))
            .block(Block::bordered().title(title.to_string())),
        area,
    );
}

fn link(frame: &mut Frame, area: Rect, app: &App, s: &LiveStatus) {
    let p = &s.snapshot.publisher;
    let q = &s.snapshot.queue;
    let mut lines = vec![Line::from(vec![
        Span::raw("broker      "),
        if p.connected {
            Span::styled("connected", Style::new().fg(Color::Green))
        } else {
            Span::styled("NOT connected", Style::new().fg(Color::Red))
        },
    ])];
    if let Some(f) = &p.last_failure {
        lines.push(Line::from(format!(
            "last failure {} ago: {} ({})",
            age(f.at_ms),
            f.message,
            f.kind
        )));
    }
    lines.push(Line::from(format!(
        "connects    {} ({} failures); last handshake {:.0} ms",
        p.connects, p.failures, p.last_connect_ms
    )));
    lines.push(Line::from(format!(
        "delivered   {} messages, {} payload bytes ({} on the wire)",
        p.messages_acked, p.payload_bytes_acked, p.mqtt_bytes_acked
    )));
    if let Some(days) = p.client_cert_days_left {
        lines.push(Line::from(format!("client cert {days:.0} days left")));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(format!(
        "queue       {} entries, {}",
        q.depth,
        mib(q.bytes)
    )));
    lines.push(Line::from(format!(
        "oldest      {}",
        q.oldest_age_s
            .map_or("-".to_string(), |s| format!("{s:.0} s old"))
    )));
    lines.push(Line::from(format!(
        "dropped     {} (max_bytes), {} (max_age_s)",
        q.dropped_cap, q.dropped_age
    )));
    lines_view(frame, area, app, " link & queue ", lines);
}

fn system(frame: &mut Frame, area: Rect, app: &App, s: &LiveStatus) {
    let p = &s.snapshot.process;
    let y = &s.snapshot.system;
    let mut lines = vec![
        Line::from(format!(
            "process     {:.1} % CPU, {} resident",
            p.cpu_percent,
            mib(p.rss_bytes)
        )),
        Line::from(format!(
            "load        {:.2} {:.2} {:.2}",
            y.load_1, y.load_5, y.load_15
        )),
        Line::from(format!(
            "memory      {} available of {}",
            mib(y.memory_available_bytes),
            mib(y.memory_total_bytes)
        )),
        Line::from(format!(
            "data disk   {} free",
            y.data_dir_free_bytes.map_or("-".to_string(), mib)
        )),
        Line::from(format!(
            "CPU temp    {}",
            y.cpu_temperature_c
                .map_or("-".to_string(), |t| format!("{t:.1} °C"))
        )),
        Line::from(format!(
            "network     {} received, {} sent",
            mib(y.network_rx_bytes),
            mib(y.network_tx_bytes)
        )),
        Line::from(format!(
            "software    {} {} ({}, {})",
            s.snapshot.software.name,
            s.snapshot.software.version,
            s.snapshot.software.build,
            s.snapshot.software.profile
        )),
    ];
    if let Some(c) = &s.snapshot.config {
        lines.push(Line::from(format!(
            "config      {} (sha256 {}…), loaded {} ago",
            c.file,
            c.sha256.get(..12).unwrap_or(&c.sha256),
            age(c.loaded_ms)
        )));
        for d in &c.not_started {
            lines.push(Line::styled(
                format!("NOT STARTED {}: {}", d.name, d.error),
                Style::new().fg(Color::Red),
            ));
        }
        if let Some(r) = &c.reload {
            lines.push(Line::from(format!(
                "last reload {} ago: {}",
                age(r.at_ms),
                if r.ok { "applied" } else { "REFUSED" }
            )));
        }
    }
    lines_view(frame, area, app, " system ", lines);
}
