//! Planning an invocation: which stages the options select, each selected stage's fingerprint,
//! and whether it runs, is reused from an earlier identical result, or was already completed in
//! this run; and for each stage the selection needs but does not run, the run whose outputs it
//! takes. Planning lists input files and reads manifests; it executes nothing.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::manifest::{self, CacheEntry, Manifest, StageRecord, StageStatus};
use super::{Action, Plan, PlannedStage, RunOptions};
use crate::config::{Pipeline, Stage, StageParams};
use crate::data::reader::Located;
use crate::error::{Error, Result};
use crate::stages;
use crate::storage::Store;

/// A new run id: UTC time, then 4 hex characters so runs started in the same second differ.
pub fn new_run_id() -> String {
    let t = Utc::now();
    let mut h = Sha256::new();
    h.update(t.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    format!(
        "{}-{}",
        t.format("%Y%m%dT%H%M%SZ"),
        &hex::encode(h.finalize())[..4]
    )
}

fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with(['.', '_']);
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--run-id `{id}`: use letters, digits, `-`, `_` and `.` (not first), at most 128 characters"
        )))
    }
}

/// Which stages the options select.
fn selection(p: &Pipeline, o: &RunOptions) -> Result<BTreeSet<usize>> {
    let idx = |name: &str, flag: &str| {
        p.stage_index(name).ok_or_else(|| {
            Error::Usage(format!(
                "{flag} {name}: no such stage in {} (stages: {})",
                p.file,
                p.dag.names.join(", ")
            ))
        })
    };
    let all: BTreeSet<usize> = (0..p.dag.len()).collect();
    let mut sel = all.clone();
    if !o.stages.is_empty() {
        sel = o
            .stages
            .iter()
            .map(|s| idx(s, "--stage"))
            .collect::<Result<_>>()?;
    }
    if let Some(f) = &o.from {
        let i = idx(f, "--from")?;
        let mut d = p.dag.descendants(i);
        d.insert(i);
        sel = sel.intersection(&d).copied().collect();
    }
    if let Some(t) = &o.to {
        let i = idx(t, "--to")?;
        let mut a = p.dag.ancestors(i);
        a.insert(i);
        sel = sel.intersection(&a).copied().collect();
    }
    if sel.is_empty() {
        return Err(Error::Usage(
            "the --stage/--from/--to options select no stage".into(),
        ));
    }
    Ok(sel)
}

/// What planning knows while it walks the stages.
struct Planner<'a> {
    p: &'a Pipeline,
    o: &'a RunOptions,
    artifacts: &'a Store,
    existing: Option<&'a Manifest>,
    /// The run needed stages take their outputs from.
    base: Option<Manifest>,
    located: &'a HashMap<String, Located>,
    /// The run's time when it is pinned (`--as-of`, `run.as_of`, a resumed run's).
    as_of: Option<DateTime<Utc>>,
    /// The run's time, pinned or not.
    now: DateTime<Utc>,
    /// Fingerprints of the stages planned so far, by index.
    fps: HashMap<usize, String>,
}

/// Plans an invocation without executing anything (lists inputs, reads manifests).
pub async fn plan(p: &Pipeline, o: &RunOptions) -> Result<Plan> {
    let artifacts = Store::open(&p.storage.artifacts)?;
    if let Some(id) = &o.run_id {
        check_run_id(id)?;
    }
    let selected = selection(p, o)?;
    let run_id = o.run_id.clone().unwrap_or_else(new_run_id);
    let existing = manifest::load(&artifacts, &run_id).await?;
    if let Some(m) = &existing {
        if m.pipeline != p.name {
            return Err(Error::Usage(format!(
                "run `{run_id}` belongs to pipeline `{}`, not `{}`; pick another --run-id",
                m.pipeline, p.name
            )));
        }
    }
    let (as_of, as_of_pinned) = match (p.as_of, &existing) {
        (Some(t), _) => (t, true),
        (None, Some(m)) => (
            crate::time::parse_timestamp(&m.as_of).unwrap_or_else(Utc::now),
            false,
        ),
        (None, None) => (Utc::now(), false),
    };
    let needed: BTreeSet<usize> = selected
        .iter()
        .flat_map(|&i| p.dag.ancestors(i))
        .filter(|i| !selected.contains(i))
        .collect();
    // Where upstream outputs come from: this run if it exists, else the latest run.
    let base = match (&existing, needed.is_empty()) {
        (_, true) => None,
        (Some(m), false) => Some(m.clone()),
        (None, false) => manifest::latest(&artifacts).await?,
    };
    let located = locate_inputs(p, &selected).await?;
    let mut planner = Planner {
        p,
        o,
        artifacts: &artifacts,
        existing: existing.as_ref(),
        base,
        located: &located,
        as_of: as_of_pinned.then_some(as_of),
        now: as_of,
        fps: HashMap::new(),
    };
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for i in p.dag.topo_order().expect("compiled pipelines are acyclic") {
        let st = &p.stages[i];
        let mut planned = PlannedStage {
            name: st.name.clone(),
            kind: st.kind(),
            needs: st.needs.clone(),
            action: Action::Skip,
            fingerprint: String::new(),
            record: None,
        };
        if selected.contains(&i) {
            planner.selected(i, &mut planned).await?;
        } else if needed.contains(&i) && !planner.upstream(i, &mut planned) {
            missing.push(i);
        }
        out.push(planned);
    }
    if !missing.is_empty() {
        return Err(missing_upstream(
            p,
            &selected,
            &missing,
            planner.base.as_ref(),
        ));
    }
    Ok(Plan {
        resumed: existing.is_some(),
        run_id,
        stages: out,
        as_of,
        as_of_pinned,
        existing,
        located,
        artifacts,
    })
}

/// Lists the inputs of the selected load stages (their fingerprints decide reuse).
async fn locate_inputs(
    p: &Pipeline,
    selected: &BTreeSet<usize>,
) -> Result<HashMap<String, Located>> {
    let mut located = HashMap::new();
    for &i in selected {
        for ds in stages::datasets_read(p, &p.stages[i]) {
            if !located.contains_key(&ds) {
                let d = &p.datasets[&ds];
                let l = crate::data::reader::locate(&p.storage.data, &d.location)
                    .await
                    .map_err(|e| e.context(format!("dataset `{ds}`")))?;
                located.insert(ds.clone(), l);
            }
        }
    }
    Ok(located)
}

impl Planner<'_> {
    /// A selected stage: done earlier in this run, reused from an identical earlier result, or
    /// run. A kind that is never reused always runs.
    async fn selected(&mut self, i: usize, planned: &mut PlannedStage) -> Result<()> {
        let st = &self.p.stages[i];
        // A needed stage no run completed has no fingerprint; the plan fails once all are known.
        let upstream: Vec<&str> = self.p.dag.deps[i]
            .iter()
            .map(|d| self.fps.get(d).map_or("", String::as_str))
            .collect();
        // A query of the run's time gives another table at another time, pinned or not.
        let uses_time = matches!(&st.params, StageParams::Sql { query, .. } if query.uses_as_of);
        let as_of = if uses_time {
            Some(self.now)
        } else {
            self.as_of
        };
        let fp = fingerprint(self.p, st, &upstream, self.located, as_of);
        planned.fingerprint = fp.clone();
        self.fps.insert(i, fp.clone());
        if self.o.force || !st.params.reusable() {
            planned.action = Action::Run;
            return Ok(());
        }
        let done_here = self
            .existing
            .and_then(|m| m.stage(&st.name))
            .filter(|r| r.status.is_done() && r.fingerprint == fp);
        if let Some(r) = done_here {
            planned.action = Action::Done;
            planned.record = Some(r.clone());
        } else if let Some(hit) = cached(self.artifacts, &st.name, &fp).await? {
            planned.action = Action::Reuse {
                from_run: hit.run_id.clone(),
            };
            planned.record = Some(reused(hit.record, &hit.run_id));
        } else {
            planned.action = Action::Run;
        }
        Ok(())
    }

    /// A stage the selection needs but does not run: its outputs come from the base run.
    /// False when the base run has no completed record of it.
    fn upstream(&mut self, i: usize, planned: &mut PlannedStage) -> bool {
        let st = &self.p.stages[i];
        let Some(b) = &self.base else {
            return false;
        };
        let Some(rec) = b.stage(&st.name).filter(|r| r.status.is_done()) else {
            return false;
        };
        planned.fingerprint = rec.fingerprint.clone();
        if self.existing.is_some_and(|m| m.run_id == b.run_id) {
            planned.action = Action::Done;
            planned.record = Some(rec.clone());
        } else {
            planned.action = Action::Upstream {
                from_run: b.run_id.clone(),
            };
            planned.record = Some(reused(rec.clone(), &b.run_id));
        }
        self.fps.insert(i, rec.fingerprint.clone());
        true
    }
}

/// The usage error for selected stages whose needed stages no run has completed: every such
/// stage at once, and how to get their outputs.
fn missing_upstream(
    p: &Pipeline,
    selected: &BTreeSet<usize>,
    missing: &[usize],
    base: Option<&Manifest>,
) -> Error {
    let names = |ix: &mut dyn Iterator<Item = usize>| {
        ix.map(|i| format!("`{}`", p.stages[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = names(&mut selected.iter().copied());
    let lacking = names(&mut missing.iter().copied());
    let last = p.stages[*selected.iter().next_back().expect("a selection")]
        .name
        .as_str();
    let whose = match base {
        None => "no earlier run exists to take them from".to_string(),
        Some(b) => format!("run `{}` has not completed them", b.run_id),
    };
    Error::Usage(format!(
        "{wanted} need{} the outputs of {lacking}, and {whose}; run them first \
         (`mlpipe run --to {last}` runs everything {last} needs), or name a run that has them with --run-id",
        if selected.len() == 1 { "s" } else { "" }
    ))
}

/// A record taken from another run: reused, and from the run that computed it.
fn reused(mut r: StageRecord, run: &str) -> StageRecord {
    r.status = StageStatus::Reused;
    r.reused_from = Some(r.reused_from.clone().unwrap_or_else(|| run.to_string()));
    r
}

/// A cache entry whose outputs all still exist and whose validity has not run out.
async fn cached(artifacts: &Store, stage: &str, fp: &str) -> Result<Option<CacheEntry>> {
    let Some(e) = artifacts
        .get_json::<CacheEntry>(&manifest::cache_path(stage, fp))
        .await
        .ok()
        .flatten()
    else {
        return Ok(None);
    };
    if let Some(until) = e
        .record
        .valid_until
        .as_deref()
        .and_then(crate::time::parse_timestamp)
    {
        if Utc::now() > until {
            return Ok(None);
        }
    }
    for o in &e.record.outputs {
        match artifacts.head(&o.path).await? {
            Some(h) if h.size == o.bytes => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(e))
}

/// The fingerprint of a stage: its kind's configuration, its inputs, the fingerprints of the
/// stages it needs, and the code version. Equal fingerprints mean equal outputs.
fn fingerprint(
    p: &Pipeline,
    st: &Stage,
    upstream: &[&str],
    located: &HashMap<String, Located>,
    as_of: Option<DateTime<Utc>>,
) -> String {
    let inputs: serde_json::Map<String, serde_json::Value> = stages::datasets_read(p, st)
        .into_iter()
        .filter_map(|d| {
            located
                .get(&d)
                .map(|l| (d, serde_json::Value::String(l.fingerprint())))
        })
        .collect();
    let doc = serde_json::json!({
        "code": crate::CODE_VERSION,
        "kind_version": stages::kind_version(st.kind()),
        "config": stages::config_slice(p, st),
        "inputs": inputs,
        "upstream": upstream,
        "as_of": as_of.map(crate::time::format_millis),
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))[..16].to_string()
}
