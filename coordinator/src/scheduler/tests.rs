//! The scheduler against the in-memory run store and a fake task runner, with the clock
//! given to each tick.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use medallion_pipeline::report::{RunReport, TableReport, TableStatus};
use medallion_proto::{Deployment, PipelineInfo, RunInfo, RunState};
use tempfile::TempDir;

use super::{Scheduler, next_run};
use crate::runs::Runs;
use crate::store::{MemoryRunStore, RunStore};
use crate::testing::{FakeRunner, confined, pipeline};

struct Fixture {
    dir: TempDir,
    store: Arc<MemoryRunStore>,
    runs: Arc<Runs>,
    scheduler: Arc<Scheduler>,
}

fn fixture(runner: Arc<FakeRunner>) -> Fixture {
    let store = MemoryRunStore::new();
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::new(
        store.clone(),
        runner,
        None,
        confined(dir.path()),
        Arc::default(),
    );
    let scheduler = Scheduler::new(runs.clone(), store.clone(), Duration::from_secs(3600));
    Fixture {
        dir,
        store,
        runs,
        scheduler,
    }
}

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap()
}

fn date(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, d).unwrap()
}

/// A daily schedule from January 1st, 2026.
fn daily(catchup: bool, max_active_runs: u32) -> String {
    format!(
        "schedule:\n  cron: \"0 0 * * *\"\n  start_date: 2026-01-01\n  catchup: {catchup}\n  \
         max_active_runs: {max_active_runs}\n"
    )
}

impl Fixture {
    async fn deploy(&self, more: &str) -> Deployment {
        let spec = (&pipeline(self.dir.path(), more)).into();
        self.scheduler.deploy(spec).await.unwrap();
        self.store.deployments().await.unwrap().remove(0)
    }

    /// Every run so far, oldest interval first.
    async fn runs(&self) -> Vec<RunInfo> {
        let mut runs = self.runs.list(0).await.unwrap();
        runs.sort_by_key(|r| (r.interval_start_micros, r.submitted_ms));
        runs
    }

    async fn ds(&self) -> Vec<String> {
        self.runs().await.into_iter().map(|r| r.ds).collect()
    }

    /// Waits until no run is queued or running.
    async fn settle(&self) {
        let idle = async {
            while self.runs.active_of("t") > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), idle)
            .await
            .expect("runs end");
    }
}

#[tokio::test]
async fn with_catch_up_every_missed_interval_runs_in_order() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy(&daily(true, 10)).await;
    let queued = f
        .scheduler
        .tick(day(4) + chrono::Duration::hours(12))
        .await
        .unwrap();
    assert_eq!(queued, 3);
    f.settle().await;
    assert_eq!(f.ds().await, ["2026-01-01", "2026-01-02", "2026-01-03"]);
    let runs = f.runs().await;
    assert!(
        runs.iter()
            .all(|r| r.trigger == "scheduled" && r.spec_version == 1)
    );
    assert!(runs.iter().all(|r| r.state == RunState::Succeeded as i32));
    // Nothing more is due until the next tick of the schedule.
    assert_eq!(
        f.scheduler
            .tick(day(4) + chrono::Duration::hours(23))
            .await
            .unwrap(),
        0
    );
    assert_eq!(f.scheduler.tick(day(5)).await.unwrap(), 1);
}

#[tokio::test]
async fn without_catch_up_only_the_latest_interval_runs() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy(&daily(false, 10)).await;
    assert_eq!(
        f.scheduler
            .tick(day(4) + chrono::Duration::hours(12))
            .await
            .unwrap(),
        1
    );
    f.settle().await;
    assert_eq!(f.ds().await, ["2026-01-03"]);
}

#[tokio::test]
async fn a_paused_pipeline_runs_nothing_and_resumes_with_or_without_catch_up() {
    for (catchup, expected) in [
        (false, vec!["2026-01-01", "2026-01-05"]),
        (
            true,
            vec![
                "2026-01-01",
                "2026-01-02",
                "2026-01-03",
                "2026-01-04",
                "2026-01-05",
            ],
        ),
    ] {
        let f = fixture(FakeRunner::succeeding());
        f.deploy(&daily(catchup, 10)).await;
        assert_eq!(f.scheduler.tick(day(2)).await.unwrap(), 1);
        f.settle().await;
        let paused = f.scheduler.set_paused("t", true).await.unwrap();
        assert!(paused.paused && paused.next_run_ms == 0);
        assert_eq!(f.scheduler.tick(day(5)).await.unwrap(), 0, "paused");
        f.scheduler.set_paused("t", false).await.unwrap();
        f.scheduler.tick(day(6)).await.unwrap();
        f.settle().await;
        // Catching up is bounded by max_active_runs per tick: tick until nothing is due.
        while f.scheduler.tick(day(6)).await.unwrap() > 0 {
            f.settle().await;
        }
        assert_eq!(f.ds().await, expected, "catchup: {catchup}");
    }
}

#[tokio::test]
async fn max_active_runs_holds_while_runs_are_running() {
    let runner = FakeRunner::gated();
    let f = fixture(runner.clone());
    f.deploy(&daily(true, 2)).await;
    let now = day(7);
    assert_eq!(f.scheduler.tick(now).await.unwrap(), 2);
    assert_eq!(f.scheduler.tick(now).await.unwrap(), 0, "two are active");
    assert_eq!(f.runs.active_of("t"), 2);
    let mut seen = 2;
    while seen < 6 {
        runner.open(1);
        // A finished run frees a place for the next interval, never more than two at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen += f.scheduler.tick(now).await.unwrap();
        assert!(f.runs.active_of("t") <= 2);
    }
    runner.open(100);
    f.settle().await;
    let ds = f.ds().await;
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.first().unwrap(), "2026-01-01");
    assert_eq!(ds.last().unwrap(), "2026-01-06");
}

#[tokio::test]
async fn a_new_leader_neither_skips_nor_doubles_a_scheduled_run() {
    let f = fixture(FakeRunner::succeeding());
    let before = f.deploy(&daily(true, 1)).await;
    // The first leader ran the 1st, then saved the run of the 2nd with its cursor and died
    // before starting it.
    assert_eq!(f.scheduler.tick(day(2)).await.unwrap(), 1);
    f.settle().await;
    let saved = f.store.deployments().await.unwrap().remove(0);
    assert_ne!(saved, before);
    let p = pipeline(f.dir.path(), &daily(true, 1));
    let (after, interval, _) = next_run(&saved, p.schedule().as_ref(), &p, day(3)).unwrap();
    let spec = medallion_proto::SpecText {
        interval_start_micros: interval.start.timestamp_micros(),
        interval_end_micros: interval.end.timestamp_micros(),
        ..(&p).into()
    };
    let orphan =
        crate::runs::new_record(&spec.parse().unwrap(), false, crate::runs::Origin::manual());
    assert!(f.store.schedule_run(&saved, &after, &orphan).await.unwrap());
    // The next leader shares the store: it resumes that run, and schedules only the 3rd.
    let runs = Runs::new(
        f.store.clone(),
        FakeRunner::succeeding(),
        None,
        confined(f.dir.path()),
        Arc::default(),
    );
    let next = Scheduler::new(runs.clone(), f.store.clone(), Duration::from_secs(3600));
    runs.resume().await.unwrap();
    let mut queued = 0;
    loop {
        let n = next.tick(day(4)).await.unwrap();
        queued += n;
        if n == 0 && runs.active_of("t") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(queued, 1, "only the 3rd was new");
    let mut runs = runs.list(0).await.unwrap();
    runs.sort_by_key(|r| r.interval_start_micros);
    let ds: Vec<&str> = runs.iter().map(|r| r.ds.as_str()).collect();
    assert_eq!(ds, ["2026-01-01", "2026-01-02", "2026-01-03"]);
    assert!(runs.iter().all(|r| r.state == RunState::Succeeded as i32));
}

#[tokio::test]
async fn a_run_and_its_cursor_are_saved_only_over_the_deployment_they_were_computed_from() {
    let f = fixture(FakeRunner::succeeding());
    let before = f.deploy(&daily(true, 1)).await;
    let p = pipeline(f.dir.path(), &daily(true, 1));
    let (after, _, _) = next_run(&before, p.schedule().as_ref(), &p, day(3)).unwrap();
    let record = crate::runs::new_record(&p, false, crate::runs::Origin::manual());
    // Another change landed first (a pause, or another leader's run).
    f.scheduler.set_paused("t", true).await.unwrap();
    assert!(
        !f.store
            .schedule_run(&before, &after, &record)
            .await
            .unwrap()
    );
    assert!(f.store.runs().await.unwrap().is_empty(), "nothing written");
}

#[tokio::test]
async fn a_backfill_queues_one_run_per_interval_in_order_and_keeps_one_record() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy(&daily(false, 2)).await;
    f.scheduler.set_paused("t", true).await.unwrap();
    let info = f.scheduler.backfill("t", date(10), date(14)).await.unwrap();
    assert_eq!(info.backfill_pending, 5);
    while f.scheduler.tick(day(20)).await.unwrap() > 0 || f.runs.active_of("t") > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = f.runs().await;
    let ds: Vec<&str> = runs.iter().map(|r| r.ds.as_str()).collect();
    assert_eq!(
        ds,
        [
            "2026-01-10",
            "2026-01-11",
            "2026-01-12",
            "2026-01-13",
            "2026-01-14"
        ]
    );
    assert!(runs.iter().all(|r| r.trigger.starts_with("backfill ")));
    let left = &f.scheduler.pipelines().await.unwrap()[0];
    assert_eq!(left.backfill_pending, 0);
    assert!(f.store.deployments().await.unwrap()[0].backfills.is_empty());
}

#[tokio::test]
async fn thousands_of_backfill_intervals_cost_one_cursor_each_step() {
    let f = fixture(FakeRunner::succeeding());
    let mut d = f.deploy("").await;
    let p = pipeline(f.dir.path(), "");
    let from = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    let to = from + chrono::Days::new(1999);
    f.scheduler.backfill("t", from, to).await.unwrap();
    d.backfills = f.store.deployments().await.unwrap()[0].backfills.clone();
    let size = prost::Message::encoded_len(&d);
    let started = std::time::Instant::now();
    let mut starts = Vec::new();
    while let Some((next, interval, _)) = next_run(&d, None, &p, Utc::now()) {
        starts.push(interval.start);
        assert!(
            prost::Message::encoded_len(&next) <= size,
            "the record does not grow"
        );
        d = next;
    }
    assert_eq!(starts.len(), 2000);
    assert!(
        starts
            .windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::days(1))
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn trigger_runs_a_logical_date_and_deploy_keeps_versions() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy(&daily(false, 1)).await;
    let run = f.scheduler.trigger("t", Some(date(9))).await.unwrap();
    assert_eq!(
        (run.ds.as_str(), run.trigger.as_str()),
        ("2026-01-09", "manual")
    );
    f.settle().await;
    let same = f.deploy(&daily(false, 1)).await;
    assert_eq!(same.version, 1, "the same text is the same version");
    let changed = f.deploy(&daily(false, 3)).await;
    assert_eq!(changed.version, 2);
    let missing = f.scheduler.trigger("nope", None).await.unwrap_err();
    assert!(
        missing.to_string().contains("no deployed pipeline 'nope'"),
        "{missing}"
    );
    let gone = f.scheduler.undeploy("t").await.unwrap();
    assert_eq!(gone.version, 2);
    assert!(f.scheduler.pipelines().await.unwrap().is_empty());
}

#[tokio::test]
async fn ended_runs_past_their_retention_are_forgotten() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy(&daily(true, 10)).await;
    f.scheduler.tick(day(4)).await.unwrap();
    f.settle().await;
    assert_eq!(
        f.runs.prune(Duration::from_secs(3600)).await.unwrap(),
        0,
        "recent runs stay"
    );
    assert_eq!(f.store.runs().await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(f.runs.prune(Duration::from_millis(1)).await.unwrap(), 3);
    assert!(f.store.runs().await.unwrap().is_empty());
    // The cursor stays: pruning forgets runs, it does not schedule them again.
    assert_eq!(f.scheduler.tick(day(4)).await.unwrap(), 0);
}

/// `(table, version, committed_ms, run_id)` of each table `medallion pipelines` shows.
fn freshness_of(p: &PipelineInfo) -> Vec<(String, u64, i64, String)> {
    let t = &p.tables;
    t.iter()
        .map(|t| (t.table.clone(), t.version, t.committed_ms, t.run_id.clone()))
        .collect()
}

#[tokio::test]
async fn each_tables_last_change_is_the_newest_run_that_committed_it() {
    let f = fixture(FakeRunner::succeeding());
    let spec = "silver:\n  - { name: orders, from: bronze.orders, columns: [{ name: id, type: bigint }] }\n";
    f.deploy(spec).await;
    let pipeline = pipeline(f.dir.path(), spec);
    let run = |id: &str, ended_ms: i64, [bronze, silver]: [TableStatus; 2]| {
        let tables = [("bronze.orders", bronze), ("silver.orders", silver)]
            .map(|(t, status)| TableReport::new(&t.parse().unwrap(), status));
        let report = RunReport {
            run_id: id.into(),
            pipeline: "t".into(),
            ds: String::new(),
            started_at: String::new(),
            duration_ms: 1,
            succeeded: true,
            tables: tables.into(),
        };
        RunInfo {
            run_id: id.into(),
            pipeline: "t".into(),
            ended_ms,
            report_json: serde_json::to_string(&report).unwrap(),
            ..Default::default()
        }
    };
    let committed = |version| TableStatus::Committed { version };
    let same = || TableStatus::UpToDate;
    // Newest first: the last run changed nothing; both tables last changed in the one before.
    let runs = [
        run("c", 300, [same(), same()]),
        run("b", 200, [committed(4), committed(2)]),
        run("a", 100, [committed(3), committed(1)]),
    ];
    let info = PipelineInfo {
        tables: super::freshness(&pipeline, &runs),
        ..Default::default()
    };
    assert_eq!(
        freshness_of(&info),
        [
            ("bronze.orders".into(), 4, 200, "b".into()),
            ("silver.orders".into(), 2, 200, "b".into()),
        ]
    );
}

#[tokio::test]
async fn without_a_run_record_a_tables_last_change_comes_from_its_delta_log() {
    let f = fixture(FakeRunner::succeeding());
    f.deploy("").await;
    let never = f.scheduler.pipelines().await.unwrap().remove(0);
    assert_eq!(
        freshness_of(&never),
        [("bronze.orders".into(), 0, 0, "".into())]
    );

    // Written by another writer (or by a run whose record was pruned).
    let uri = f.dir.path().join("lake/bronze/orders");
    let batch = medallion_lake::batch_of(vec![(
        "id",
        std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])),
        true,
    )])
    .unwrap();
    let before = Utc::now().timestamp_millis();
    for _ in 0..2 {
        let options = Default::default();
        medallion_lake::append(uri.to_str().unwrap(), &options, batch.clone())
            .await
            .unwrap();
    }
    let found = f.scheduler.pipelines().await.unwrap().remove(0);
    let [(table, version, at, run_id)] = &freshness_of(&found)[..] else {
        panic!("{found:?}");
    };
    assert_eq!(
        (table.as_str(), *version, run_id.as_str()),
        ("bronze.orders", 1, "")
    );
    let now = Utc::now().timestamp_millis();
    assert!(
        (before..=now).contains(at),
        "committed at {at}, between {before} and {now}"
    );
}

#[tokio::test]
async fn an_interval_whose_rendered_spec_does_not_validate_is_a_failed_run_not_a_gap() {
    let f = fixture(FakeRunner::succeeding());
    // SQL that is broken on the 2nd only.
    let filter = "    filters: [\"id >{% if ds == '2026-01-02' %} >{% endif %} 0\"]\n";
    let more = format!(
        "silver:\n  - name: orders\n    from: bronze.orders\n    columns: [{{ name: id, type: bigint }}]\n{filter}{}",
        daily(true, 10)
    );
    f.deploy(&more).await;
    assert_eq!(f.scheduler.tick(day(4)).await.unwrap(), 3);
    f.settle().await;
    let runs = f.runs().await;
    let ds: Vec<&str> = runs.iter().map(|r| r.ds.as_str()).collect();
    assert_eq!(ds, ["2026-01-01", "2026-01-02", "2026-01-03"], "no gap");
    assert_eq!(runs[1].state, RunState::Failed as i32);
    let message = &runs[1].message;
    assert!(
        message.contains("does not validate for 2026-01-02"),
        "{message}"
    );
    assert!(message.contains("silver[0].filters[0]"), "{message}");
    // The other days ran (their tasks write nothing here, so silver finds no data).
    for r in [&runs[0], &runs[2]] {
        assert!(!r.message.contains("does not validate"), "{}", r.message);
    }
}

/// A long backfill through the whole run machinery (plan, dispatch, commit, run history):
/// every interval runs once, and its last hundred runs cost about what its first hundred did,
/// so thousands of intervals take time in proportion (2,000 took 6 min in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backfill_runs_every_interval_once_at_a_steady_pace() {
    let f = fixture(FakeRunner::succeeding());
    let schedule =
        "schedule: { cron: \"0 0 * * *\", start_date: 2020-01-01, max_active_runs: 8 }\n";
    f.deploy(schedule).await;
    f.scheduler.set_paused("t", true).await.unwrap();
    let from = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    let to = from + chrono::Days::new(399);
    f.scheduler.backfill("t", from, to).await.unwrap();
    while f.scheduler.tick(day(20)).await.unwrap() > 0 || f.runs.active_of("t") > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = f.runs().await;
    let days: BTreeSet<&str> = runs.iter().map(|r| r.ds.as_str()).collect();
    assert_eq!((runs.len(), days.len()), (400, 400), "each interval once");
    assert!(runs.iter().all(|r| r.state == RunState::Succeeded as i32));
    let mut ended: Vec<i64> = runs.iter().map(|r| r.ended_ms).collect();
    ended.sort_unstable();
    let pace = |from: usize| (ended[from + 99] - ended[from]).max(1) as f64;
    let (first, last) = (pace(0), pace(300));
    assert!(
        last < first * 3.0,
        "the last 100 runs took {last} ms, the first 100 {first} ms"
    );
}
