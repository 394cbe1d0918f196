//! Runs driven end to end against the in-memory run store and a fake task runner: submit,
//! resume after a failover, cancel, watch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use medallion_proto::run_event::Event;
use medallion_proto::{RunInfo, RunRecord, RunState, TaskError};
use tempfile::TempDir;

use super::{Runs, RunsError};
use crate::store::{MemoryRunStore, RunStore};
use crate::testing::{FakeRunner, confined, empty_result, pipeline};
use medallion_pipeline::report::{TableReport, TableStatus};

struct Fixture {
    dir: TempDir,
    store: Arc<MemoryRunStore>,
    runner: Arc<FakeRunner>,
    runs: Arc<Runs>,
}

fn fixture(runner: Arc<FakeRunner>) -> Fixture {
    let store = MemoryRunStore::new();
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::new(
        store.clone(),
        runner.clone(),
        None,
        confined(dir.path()),
        Arc::default(),
    );
    Fixture {
        dir,
        store,
        runner,
        runs,
    }
}

impl Fixture {
    fn spec(&self) -> medallion_proto::SpecText {
        (&pipeline(self.dir.path(), "")).into()
    }

    /// A run record as a previous leader left it.
    async fn left_behind(&self, run_id: &str, state: RunState, starts: u32) {
        let record = RunRecord {
            info: Some(RunInfo {
                run_id: run_id.into(),
                pipeline: "t".into(),
                state: state as i32,
                ..Default::default()
            }),
            pipeline: Some(self.spec()),
            starts,
            ..Default::default()
        };
        self.store.put_run(&record).await.unwrap();
    }

    /// Follows the run to its end; returns its events and its end as the watcher saw it.
    async fn ended(&self, run_id: &str) -> (Vec<Event>, RunInfo) {
        let watch = async {
            let mut events = Vec::new();
            let mut stream = self.runs.watch(run_id).await.unwrap();
            while let Some(e) = stream.next().await {
                match e.event.unwrap() {
                    Event::RunEnded(info) => return (events, info),
                    e => events.push(e),
                }
            }
            panic!("the watch ended without RunEnded");
        };
        tokio::time::timeout(Duration::from_secs(120), watch)
            .await
            .expect("the run ends")
    }

    async fn stored(&self, run_id: &str) -> RunRecord {
        self.store.run(run_id).await.unwrap().expect("a stored run")
    }
}

fn state(info: &RunInfo) -> RunState {
    RunState::try_from(info.state).unwrap()
}

#[tokio::test]
async fn a_submitted_run_is_stored_runs_and_its_end_is_stored_before_watchers_hear() {
    let f = fixture(FakeRunner::succeeding());
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    assert_eq!(state(&info), RunState::Queued);
    assert!(info.run_id.starts_with("t-"), "{}", info.run_id);
    let (events, ended) = f.ended(&info.run_id).await;
    assert_eq!(state(&ended), RunState::Succeeded, "{}", ended.message);
    assert!(events.iter().any(
        |e| matches!(e, Event::TablePlanned(t) if t.table == "bronze.orders" && t.tasks == 1)
    ));
    let stored = f.stored(&info.run_id).await;
    assert_eq!(stored.starts, 1);
    assert_eq!(stored.info.unwrap(), ended);
    assert_eq!(f.runner.calls().len(), 1);
    let tables = f.store.tables(&info.run_id).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].table, "bronze.orders");
}

#[tokio::test]
async fn a_spec_that_does_not_validate_is_refused_and_nothing_is_stored() {
    let f = fixture(FakeRunner::succeeding());
    let mut spec = f.spec();
    spec.yaml = spec.yaml.replace("source: api", "source: nope");
    match f.runs.submit(spec, false).await {
        Err(RunsError::InvalidSpec(message)) => {
            assert!(message.contains("unknown source 'nope'"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(f.store.runs().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_submit_the_store_cannot_save_is_refused_and_not_started() {
    let f = fixture(FakeRunner::succeeding());
    f.store.fail_writes(1);
    assert!(matches!(
        f.runs.submit(f.spec(), false).await,
        Err(RunsError::Store(_))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.runner.calls().is_empty());
    assert!(f.runs.list(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn writes_the_store_refuses_while_a_run_goes_are_retried() {
    let f = fixture(FakeRunner::gated());
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    f.runner.wait_for_calls(1).await;
    f.store.fail_writes(3);
    f.runner.open(1);
    let (_, ended) = f.ended(&info.run_id).await;
    assert_eq!(state(&ended), RunState::Succeeded);
    let stored = f.stored(&info.run_id).await;
    assert_eq!(state(stored.info.as_ref().unwrap()), RunState::Succeeded);
    assert_eq!(f.store.tasks(&info.run_id).len(), 1);
    assert_eq!(f.store.tables(&info.run_id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn resume_starts_a_run_left_queued() {
    let f = fixture(FakeRunner::succeeding());
    f.left_behind("t-queued", RunState::Queued, 0).await;
    f.runs.resume().await.unwrap();
    let (_, ended) = f.ended("t-queued").await;
    assert_eq!(state(&ended), RunState::Succeeded);
    assert_eq!(f.stored("t-queued").await.starts, 1);
    assert_eq!(f.runner.calls()[0].run_id, "t-queued");
}

#[tokio::test]
async fn resume_runs_a_running_run_again_and_reports_what_the_old_leader_committed() {
    let f = fixture(FakeRunner::succeeding());
    f.left_behind("t-running", RunState::Running, 1).await;
    let table = medallion_pipeline::TableRef::new(medallion_pipeline::Layer::Bronze, "orders");
    let committed = TableReport::new(&table, TableStatus::Committed { version: 7 });
    f.store.put_table("t-running", &committed).await.unwrap();
    f.runs.resume().await.unwrap();
    let (_, ended) = f.ended("t-running").await;
    assert_eq!(state(&ended), RunState::Succeeded);
    assert_eq!(f.stored("t-running").await.starts, 2);
    // This leader found the table up to date; the report keeps the old leader's commit.
    let report = ended.report().expect("the run's report");
    assert!(matches!(
        report.tables[0].status,
        TableStatus::Committed { version: 7 }
    ));
}

#[tokio::test]
async fn resume_leaves_ended_runs_alone() {
    let f = fixture(FakeRunner::succeeding());
    f.left_behind("t-done", RunState::Succeeded, 1).await;
    f.left_behind("t-cancelled", RunState::Cancelled, 1).await;
    f.runs.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.runner.calls().is_empty());
    assert_eq!(f.stored("t-done").await.starts, 1);
}

#[tokio::test]
async fn resume_fails_a_run_whose_spec_no_longer_validates() {
    let f = fixture(FakeRunner::succeeding());
    f.left_behind("t-broken", RunState::Running, 1).await;
    let mut record = f.stored("t-broken").await;
    record.pipeline.as_mut().unwrap().yaml = "pipeline: [".into();
    f.store.put_run(&record).await.unwrap();
    f.runs.resume().await.unwrap();
    let info = f.runs.get("t-broken").await.unwrap();
    assert_eq!(state(&info), RunState::Failed);
    assert!(
        info.message.starts_with("cannot resume"),
        "{}",
        info.message
    );
    assert!(f.runner.calls().is_empty());
}

/// An executor declared lost while only frozen wakes, finishes its task and writes into the
/// dispatch directory the run already deleted: the table's commit deletes it again.
#[tokio::test]
async fn what_a_given_up_dispatch_writes_after_all_is_deleted_at_the_commit() {
    let f = fixture(FakeRunner::answering(|t, n| match n {
        1 => Err(TaskError::lost("executor stopped answering")),
        _ => {
            let late = Path::new(&t.output_uri).join(t.dispatch_dir(1, 1));
            std::fs::create_dir_all(&late).unwrap();
            std::fs::write(late.join("part-0.parquet"), b"late").unwrap();
            Ok(empty_result(t))
        }
    }));
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    let (_, ended) = f.ended(&info.run_id).await;
    assert_eq!(state(&ended), RunState::Succeeded, "{}", ended.message);
    let calls = f.runner.calls();
    assert_eq!(calls.len(), 2);
    let table = Path::new(&calls[0].output_uri);
    assert!(table.is_dir(), "{}", table.display());
    assert!(
        !table.join(&calls[0].dispatch_dir).exists(),
        "the late files of {} are left",
        calls[0].dispatch_dir
    );
}

/// A leader resuming a run names its dispatches apart from the previous leader's, whose
/// executors may still be running (and delete their dispatch's directory when they stop) and
/// whose files the run may have committed: its commits leave those alone.
#[tokio::test]
async fn a_resumed_run_leaves_its_previous_leaders_dispatches_alone() {
    let f = fixture(FakeRunner::answering(|t, _| {
        // What the previous leader's first dispatch wrote, and may have committed.
        let earlier = Path::new(&t.output_uri).join(t.dispatch_dir(1, 1));
        std::fs::create_dir_all(&earlier).unwrap();
        std::fs::write(earlier.join("part-0.parquet"), b"committed").unwrap();
        Ok(empty_result(t))
    }));
    f.left_behind("t-left", RunState::Running, 1).await;
    f.runs.resume().await.unwrap();
    let (_, ended) = f.ended("t-left").await;
    assert_eq!(state(&ended), RunState::Succeeded, "{}", ended.message);
    let calls = f.runner.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].dispatch_dir, "left-0-2-1");
    let earlier = Path::new(&calls[0].output_uri).join("left-0-1");
    assert!(
        earlier.join("part-0.parquet").exists(),
        "the previous leader's files in {} are deleted",
        earlier.display()
    );
}

#[tokio::test]
async fn cancel_stops_a_running_run_and_its_task() {
    let f = fixture(FakeRunner::gated());
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    f.runner.wait_for_calls(1).await;
    let cancelled = f.runs.cancel(&info.run_id).await.unwrap();
    assert_eq!(state(&cancelled), RunState::Cancelled);
    assert_eq!(f.runner.abandoned.load(Ordering::SeqCst), 1);
    let stored = f.stored(&info.run_id).await.info.unwrap();
    assert_eq!(state(&stored), RunState::Cancelled);
    // Opening the gate now finds nothing to finish.
    f.runner.open(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        state(&f.runs.get(&info.run_id).await.unwrap()),
        RunState::Cancelled
    );
}

#[tokio::test]
async fn cancel_racing_the_runs_end_gives_one_end_state_everywhere() {
    for round in 0..5 {
        let f = fixture(FakeRunner::gated());
        let info = f.runs.submit(f.spec(), false).await.unwrap();
        f.runner.wait_for_calls(1).await;
        let mut watch = f.runs.watch(&info.run_id).await.unwrap();
        f.runner.open(1);
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        let answer = f.runs.cancel(&info.run_id).await;
        let mut ends = Vec::new();
        while let Some(e) = watch.next().await {
            if let Some(Event::RunEnded(i)) = e.event {
                ends.push(i);
            }
        }
        assert_eq!(ends.len(), 1, "one RunEnded per run");
        let stored = f.stored(&info.run_id).await.info.unwrap();
        assert_eq!(stored, ends[0]);
        match answer {
            // Cancelled in time: nothing reports success.
            Ok(i) => assert_eq!(
                (state(&i), state(&stored)),
                (RunState::Cancelled, RunState::Cancelled)
            ),
            // The run ended first: cancel says so and the run's own end stands.
            Err(RunsError::Ended { state: s, .. }) => assert_eq!(s, state(&stored)),
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn cancel_of_an_ended_or_unknown_run_is_refused() {
    let f = fixture(FakeRunner::succeeding());
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    f.ended(&info.run_id).await;
    match f.runs.cancel(&info.run_id).await {
        Err(RunsError::Ended { state, .. }) => assert_eq!(state, RunState::Succeeded),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.runs.cancel("t-nope").await,
        Err(RunsError::NotFound(id)) if id == "t-nope"
    ));
}

#[tokio::test]
async fn watching_an_ended_run_replays_its_tables_then_its_end() {
    let f = fixture(FakeRunner::succeeding());
    let info = f.runs.submit(f.spec(), false).await.unwrap();
    f.ended(&info.run_id).await;
    // The run is no longer active: this watch is served from the store.
    let (events, ended) = f.ended(&info.run_id).await;
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], Event::TableFinishedJson(json) if json.contains("bronze.orders")));
    assert_eq!(state(&ended), RunState::Succeeded);
}

/// A new leader is asked about a run before it has resumed it (the run is unended in the
/// store but not running here): the watcher is told to try again, never handed the record
/// as the run's end.
#[tokio::test]
async fn watching_a_run_not_yet_taken_over_asks_to_try_again() {
    let f = fixture(FakeRunner::succeeding());
    f.left_behind("r1", RunState::Running, 1).await;
    let refused = f.runs.watch("r1").await.err();
    assert!(
        matches!(&refused, Some(RunsError::NotTakenOver(id)) if id == "r1"),
        "{refused:?}"
    );
    assert_eq!(
        tonic::Status::from(refused.unwrap()).code(),
        tonic::Code::Unavailable
    );
    f.runs.resume().await.unwrap();
    let (_, ended) = f.ended("r1").await;
    assert_eq!(state(&ended), RunState::Succeeded);
}

#[tokio::test]
async fn two_runs_of_one_pipeline_take_turns() {
    let f = fixture(FakeRunner::gated());
    let first = f.runs.submit(f.spec(), false).await.unwrap();
    let second = f.runs.submit(f.spec(), false).await.unwrap();
    f.runner.wait_for_calls(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.runner.calls().len(),
        1,
        "the second run waits for the lock"
    );
    f.runner.open(2);
    let (_, a) = f.ended(&first.run_id).await;
    let (_, b) = f.ended(&second.run_id).await;
    assert_eq!(
        (state(&a), state(&b)),
        (RunState::Succeeded, RunState::Succeeded)
    );
    assert_eq!(f.runner.most_running.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_limited() {
    let f = fixture(FakeRunner::succeeding());
    for (id, ms) in [("t-a", 1), ("t-c", 3), ("t-b", 2)] {
        f.left_behind(id, RunState::Succeeded, 1).await;
        let mut record = f.stored(id).await;
        record.info.as_mut().unwrap().submitted_ms = ms;
        f.store.put_run(&record).await.unwrap();
    }
    let ids = |runs: Vec<RunInfo>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(ids(f.runs.list(0).await.unwrap()), ["t-c", "t-b", "t-a"]);
    assert_eq!(ids(f.runs.list(2).await.unwrap()), ["t-c", "t-b"]);
}
