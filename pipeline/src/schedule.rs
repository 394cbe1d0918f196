//! Schedules and the logical interval of a run.
//!
//! A schedule's cron ticks cut time into intervals; the run of `[t0, t1)` is due at `t1`
//! (Airflow's data interval). A run knows its interval, and templated spec fields read it as
//! `{{ ds }}`, `{{ ds_nodash }}`, `{{ data_interval_start }}` and `{{ data_interval_end }}`,
//! so a run can ingest exactly its interval's files.
//!
//! ```
//! use chrono::{NaiveDate, TimeZone, Utc};
//! use medallion_pipeline::schedule::Schedule;
//!
//! let s = Schedule::new("0 */4 * * *", "Europe/Paris", None, None, false, 1).unwrap();
//! let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
//! let i = s.interval_of_date(day).unwrap();
//! // Midnight in Paris is 23:00 UTC the day before.
//! assert_eq!(i.start, Utc.with_ymd_and_hms(2026, 2, 28, 23, 0, 0).unwrap());
//! assert_eq!(i.end, Utc.with_ymd_and_hms(2026, 3, 1, 3, 0, 0).unwrap());
//! assert_eq!(i.ds(), "2026-03-01");
//! ```

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A run's logical interval `[start, end)`, read in its schedule's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tz: Tz,
}

impl RunInterval {
    /// The day `date` in `tz`: the interval of a run without a schedule.
    pub fn day(date: NaiveDate, tz: Tz) -> Self {
        let start = midnight(date, tz);
        let end = midnight(date.succ_opt().unwrap_or(date), tz);
        Self { start, end, tz }
    }

    /// The interval's logical date (its start, in its time zone), `YYYY-MM-DD`.
    pub fn ds(&self) -> String {
        self.start
            .with_timezone(&self.tz)
            .format("%Y-%m-%d")
            .to_string()
    }

    /// The variables templated fields may use, with their values.
    pub fn variables(&self) -> [(&'static str, String); 5] {
        let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        [
            ("ds", self.ds()),
            ("ds_nodash", self.ds().replace('-', "")),
            ("data_interval_start", rfc3339(self.start)),
            ("data_interval_end", rfc3339(self.end)),
            ("logical_date", rfc3339(self.start)),
        ]
    }
}

/// The first instant of `date` in `tz` (the next valid one when midnight is skipped).
fn midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let local = date.and_time(NaiveTime::MIN);
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.to_utc(),
        chrono::LocalResult::None => Utc.from_utc_datetime(&local),
    }
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    pub tz: Tz,
    /// No interval starts before this.
    pub start: Option<DateTime<Utc>>,
    /// No interval starts at or after this.
    pub end: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: u32,
}

/// Why a schedule is invalid, and which of its fields says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

impl Schedule {
    /// `cron` has 5 fields (or 6, seconds first); `timezone` is an IANA name; dates are
    /// `YYYY-MM-DD` (midnight in the time zone) or RFC 3339 times.
    pub fn new(
        cron: &str,
        timezone: &str,
        start: Option<&str>,
        end: Option<&str>,
        catchup: bool,
        max_active_runs: u32,
    ) -> Result<Self, ScheduleError> {
        let error = |field, message: String| ScheduleError { field, message };
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| error("cron", format!("invalid cron expression: {e}")))?;
        let tz: Tz = timezone.parse().map_err(|_| {
            error(
                "timezone",
                format!("'{timezone}' is not an IANA time zone (such as UTC or Europe/Paris)"),
            )
        })?;
        let date = |field, text: Option<&str>| -> Result<_, ScheduleError> {
            text.map(|t| {
                parse_time(t, tz).ok_or_else(|| {
                    error(
                        field,
                        format!("'{t}' is not a date (YYYY-MM-DD) or an RFC 3339 time"),
                    )
                })
            })
            .transpose()
        };
        let (start, end) = (date("start_date", start)?, date("end_date", end)?);
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            return Err(error("end_date", "must be after start_date".into()));
        }
        if max_active_runs == 0 {
            return Err(error("max_active_runs", "must be at least 1".into()));
        }
        let schedule = Self {
            cron: parsed,
            tz,
            start,
            end,
            catchup,
            max_active_runs,
        };
        let from = start.unwrap_or_else(Utc::now);
        if schedule.tick_at_or_after(from).is_none() {
            return Err(error("cron", format!("'{cron}' never fires")));
        }
        Ok(schedule)
    }

    fn tick(&self, t: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, inclusive).ok()?;
        Some(next.to_utc())
    }

    fn tick_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tick(t, true)
    }

    /// The interval starting at the first tick at or after `t` (and after `start_date`), if
    /// it starts before `end_date`.
    pub fn interval_at_or_after(&self, t: DateTime<Utc>) -> Option<RunInterval> {
        let from = self.start.map_or(t, |s| s.max(t));
        let start = self.tick_at_or_after(from)?;
        if self.end.is_some_and(|end| start >= end) {
            return None;
        }
        let end = self.tick(start, false)?;
        Some(RunInterval {
            start,
            end,
            tz: self.tz,
        })
    }

    /// The run of logical date `date`: the first interval starting on or after that day's
    /// midnight in the schedule's time zone.
    pub fn interval_of_date(&self, date: NaiveDate) -> Option<RunInterval> {
        self.interval_at_or_after(midnight(date, self.tz))
    }

    /// The latest interval that has ended by `now` (a manual run's interval, and the one run
    /// when catch-up is off).
    pub fn latest_complete(&self, now: DateTime<Utc>) -> Option<RunInterval> {
        let local = now.with_timezone(&self.tz);
        let end = self.cron.find_previous_occurrence(&local, true).ok()?;
        let start = self.cron.find_previous_occurrence(&end, false).ok()?;
        let (start, end) = (start.to_utc(), end.to_utc());
        let early = self.start.is_some_and(|s| start < s);
        let late = self.end.is_some_and(|e| start >= e);
        (!early && !late).then_some(RunInterval {
            start,
            end,
            tz: self.tz,
        })
    }

    /// The next interval the scheduler should start at `now`, given that every interval
    /// starting before `cursor` was scheduled already: with catch-up, the first one not yet
    /// scheduled once it has ended; without, the latest that has ended, skipping missed ones.
    pub fn next_due(&self, cursor: DateTime<Utc>, now: DateTime<Utc>) -> Option<RunInterval> {
        let interval = if self.catchup {
            self.interval_at_or_after(cursor)?
        } else {
            self.latest_complete(now)?
        };
        (interval.start >= cursor && interval.end <= now).then_some(interval)
    }

    /// When the next interval after `cursor` ends: the time of the next scheduled run.
    pub fn next_run_at(&self, cursor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.interval_at_or_after(cursor).map(|i| i.end)
    }
}

/// `YYYY-MM-DD` (midnight in `tz`) or an RFC 3339 time.
pub fn parse_time(text: &str, tz: Tz) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(midnight(date, tz));
    }
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn every_4h(catchup: bool) -> Schedule {
        Schedule::new("0 */4 * * *", "UTC", Some("2026-01-01"), None, catchup, 1).unwrap()
    }

    #[test]
    fn a_run_covers_the_interval_that_ended_at_its_tick() {
        let s = every_4h(false);
        let i = s.latest_complete(at(2026, 1, 2, 9, 30)).unwrap();
        assert_eq!(
            (i.start, i.end),
            (at(2026, 1, 2, 4, 0), at(2026, 1, 2, 8, 0))
        );
        let vars = i.variables();
        assert_eq!(vars[0], ("ds", "2026-01-02".to_string()));
        assert_eq!(vars[1], ("ds_nodash", "20260102".to_string()));
        assert_eq!(vars[2].1, "2026-01-02T04:00:00+00:00");
        assert_eq!(vars[3].1, "2026-01-02T08:00:00+00:00");
    }

    #[test]
    fn catch_up_runs_every_missed_interval_in_order() {
        let s = every_4h(true);
        let now = at(2026, 1, 1, 13, 0);
        let mut cursor = at(2026, 1, 1, 0, 0);
        let mut starts = Vec::new();
        while let Some(i) = s.next_due(cursor, now) {
            starts.push(i.start);
            cursor = i.end;
        }
        assert_eq!(
            starts,
            [
                at(2026, 1, 1, 0, 0),
                at(2026, 1, 1, 4, 0),
                at(2026, 1, 1, 8, 0)
            ]
        );
        assert_eq!(s.next_run_at(cursor), Some(at(2026, 1, 1, 16, 0)));
    }

    #[test]
    fn without_catch_up_only_the_latest_missed_interval_runs() {
        let s = every_4h(false);
        let now = at(2026, 1, 1, 13, 0);
        let i = s.next_due(at(2026, 1, 1, 0, 0), now).unwrap();
        assert_eq!(i.start, at(2026, 1, 1, 8, 0));
        assert_eq!(s.next_due(i.end, now), None, "nothing more until 16:00");
        assert!(s.next_due(i.end, at(2026, 1, 1, 16, 0)).is_some());
    }

    #[test]
    fn start_and_end_dates_bound_the_intervals() {
        let s = Schedule::new(
            "0 0 * * *",
            "UTC",
            Some("2026-01-05"),
            Some("2026-01-07"),
            true,
            1,
        )
        .unwrap();
        let before = s.interval_at_or_after(at(2026, 1, 1, 0, 0)).unwrap();
        assert_eq!(before.start, at(2026, 1, 5, 0, 0));
        let mut cursor = at(2026, 1, 1, 0, 0);
        let mut n = 0;
        while let Some(i) = s.next_due(cursor, at(2026, 2, 1, 0, 0)) {
            cursor = i.end;
            n += 1;
        }
        assert_eq!(n, 2, "the 5th and the 6th");
        assert_eq!(s.latest_complete(at(2026, 1, 3, 0, 0)), None);
    }

    #[test]
    fn the_time_zone_places_ticks_and_the_logical_date() {
        let s = Schedule::new("0 0 * * *", "America/New_York", None, None, false, 1).unwrap();
        let i = s.latest_complete(at(2026, 7, 2, 12, 0)).unwrap();
        // Midnight in New York in July is 04:00 UTC.
        assert_eq!(
            (i.start, i.end),
            (at(2026, 7, 1, 4, 0), at(2026, 7, 2, 4, 0))
        );
        assert_eq!(i.ds(), "2026-07-01");
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |cron, tz, start, end| Schedule::new(cron, tz, start, end, false, 1).unwrap_err();
        assert_eq!(bad("61 * * * *", "UTC", None, None).field, "cron");
        assert_eq!(bad("0 * * * *", "Mars/Base", None, None).field, "timezone");
        assert_eq!(
            bad("0 * * * *", "UTC", Some("yesterday"), None).field,
            "start_date"
        );
        let e = bad("0 * * * *", "UTC", Some("2026-02-01"), Some("2026-01-01"));
        assert_eq!(e.field, "end_date");
        let zero = Schedule::new("0 * * * *", "UTC", None, None, false, 0).unwrap_err();
        assert_eq!(zero.field, "max_active_runs");
    }

    #[test]
    fn seconds_level_schedules_tick_every_second() {
        let s = Schedule::new("*/5 * * * * *", "UTC", None, None, true, 1).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        let i = s.interval_at_or_after(t).unwrap();
        assert_eq!(i.end - i.start, chrono::Duration::seconds(5));
    }
}
