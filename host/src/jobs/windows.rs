//! Maintenance windows: when a job may dispatch. A job with windows sends
//! nothing new outside them (a released batch waits, devices already
//! updating finish); PostgreSQL decides whether one is open
//! (`rollway_window_open`, with its time zone database), so every replica
//! agrees.

use chrono::NaiveTime;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Most windows a job may carry.
pub const MAX_WINDOWS: usize = 14;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// When a job may dispatch: local times of the week in one time zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Windows {
    /// An IANA time zone, e.g. `Europe/Moscow` (default `UTC`).
    #[schema(example = "Europe/Moscow")]
    pub time_zone: Option<String>,
    /// 1 to 14 windows; a job dispatches while any is open.
    pub times: Vec<Window>,
}

/// One weekly window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The days it opens on: `mon` … `sun`.
    #[schema(example = json!(["mon", "tue", "wed", "thu", "fri"]))]
    pub days: Vec<String>,
    /// Local opening time, `HH:MM` or `HH:MM:SS`.
    #[schema(example = "22:00")]
    pub from: String,
    /// Local closing time; at or before `from`, the window ends the next
    /// day (`22:00` to `05:00`).
    #[schema(example = "05:00")]
    pub to: String,
}

fn time(raw: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(raw, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(raw, "%H:%M"))
        .ok()
        // No leap second: PostgreSQL would read `10:00:60` as 10:01.
        .filter(|t| chrono::Timelike::nanosecond(t) < 1_000_000_000)
}

/// Checks windows on their own (the time zone's existence is the
/// database's to say): the problems as `(field, message)`, or the windows
/// as stored.
pub fn check(windows: &Windows) -> Result<Value, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let time_zone = windows.time_zone.clone().unwrap_or_else(|| "UTC".into());
    let zone_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+');
    if time_zone.is_empty() || time_zone.len() > 64 || !time_zone.chars().all(zone_chars) {
        errors.push(("windows.time_zone".into(), "is not a time zone name".into()));
    }
    if windows.times.is_empty() || windows.times.len() > MAX_WINDOWS {
        errors.push((
            "windows.times".into(),
            format!("must list 1 to {MAX_WINDOWS} windows"),
        ));
    }
    let mut times = Vec::new();
    for (i, window) in windows.times.iter().enumerate() {
        let field = |name: &str| format!("windows.times[{i}].{name}");
        let mut days: Vec<&str> = Vec::new();
        for day in &window.days {
            match DAYS.iter().find(|d| **d == day.to_ascii_lowercase()) {
                Some(d) if !days.contains(d) => days.push(d),
                Some(_) => errors.push((field("days"), format!("'{day}' is listed twice"))),
                None => errors.push((
                    field("days"),
                    format!("'{day}' is not one of mon, tue, wed, thu, fri, sat, sun"),
                )),
            }
        }
        if window.days.is_empty() {
            errors.push((field("days"), "must name at least one day".into()));
        }
        let from = time(&window.from);
        let to = time(&window.to);
        if from.is_none() {
            errors.push((field("from"), "must be HH:MM or HH:MM:SS".into()));
        }
        if to.is_none() {
            errors.push((field("to"), "must be HH:MM or HH:MM:SS".into()));
        }
        if let (Some(from), Some(to)) = (from, to) {
            if from == to {
                errors.push((field("to"), "must differ from 'from'".into()));
            }
            days.sort_by_key(|d| DAYS.iter().position(|x| x == d));
            times.push(json!({
                "days": days,
                "from": from.format("%H:%M:%S").to_string(),
                "to": to.format("%H:%M:%S").to_string(),
            }));
        }
    }
    if errors.is_empty() {
        Ok(json!({ "time_zone": time_zone, "times": times }))
    } else {
        Err(errors)
    }
}

/// A window written as `DAYS FROM-TO`: `mon-fri 22:00-05:00`,
/// `sat,sun 00:00-23:59`, `daily 01:00-04:00`.
pub fn parse(spec: &str) -> Result<Window, String> {
    let (days, hours) = spec
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("'{spec}' is not DAYS FROM-TO, e.g. 'mon-fri 22:00-05:00'"))?;
    let (from, to) = hours
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("'{hours}' is not FROM-TO, e.g. 22:00-05:00"))?;
    let index = |day: &str| {
        DAYS.iter()
            .position(|d| *d == day.to_ascii_lowercase())
            .ok_or_else(|| format!("'{day}' is not a day (mon … sun)"))
    };
    let mut listed = Vec::new();
    for part in days.split(',') {
        match part {
            "daily" => listed.extend(DAYS.iter().map(|d| (*d).to_owned())),
            "weekdays" => listed.extend(DAYS[..5].iter().map(|d| (*d).to_owned())),
            "weekends" => listed.extend(DAYS[5..].iter().map(|d| (*d).to_owned())),
            range => match range.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (index(first)?, index(last)?);
                    let mut day = first;
                    loop {
                        listed.push(DAYS[day].to_owned());
                        if day == last {
                            break;
                        }
                        day = (day + 1) % 7;
                    }
                }
                None => listed.push(DAYS[index(range)?].to_owned()),
            },
        }
    }
    Ok(Window {
        days: listed,
        from: from.trim().to_owned(),
        to: to.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_checked_and_kept_in_one_form() {
        let windows = Windows {
            time_zone: Some("Europe/Moscow".into()),
            times: vec![parse("fri-mon 22:00-05:00").unwrap()],
        };
        assert_eq!(
            check(&windows).unwrap(),
            json!({ "time_zone": "Europe/Moscow", "times": [
                { "days": ["mon", "fri", "sat", "sun"], "from": "22:00:00", "to": "05:00:00" } ] })
        );
        let bad = Windows {
            time_zone: None,
            times: vec![Window {
                days: vec!["mon".into(), "mon".into(), "funday".into()],
                from: "25:00".into(),
                to: "05:00".into(),
            }],
        };
        let fields: Vec<String> = check(&bad)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "windows.times[0].days",
                "windows.times[0].days",
                "windows.times[0].from"
            ]
        );
        assert!(check(&Windows::default()).is_err());
        assert!(time("10:00:60").is_none() && time("10:00:59").is_some());
        let odd_zone = Windows {
            time_zone: Some("Europe/Mos\0cow".into()),
            times: vec![parse("daily 01:00-02:00").unwrap()],
        };
        assert_eq!(check(&odd_zone).unwrap_err()[0].0, "windows.time_zone");
        assert_eq!(parse("daily 01:00-04:00").unwrap().days.len(), 7);
        assert!(parse("mon-fri").is_err());
        assert!(parse("someday 01:00-02:00").is_err());
    }
}
