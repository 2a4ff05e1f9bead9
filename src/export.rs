//! `mlpipe export step-functions`: the pipeline's DAG as an AWS Step Functions state machine
//! (Amazon States Language) whose steps are ECS tasks, each running
//! `mlpipe run PIPELINE --stage S --run-id <execution name>`.
//!
//! Stages are grouped by depth in the DAG (a stage's depth is one more than its deepest
//! dependency): a level with one stage is a `Task` state, a level with several is a `Parallel`
//! state with one branch per stage. Every stage starts after everything it needs, and independent
//! stages of one depth (the three trainings of the default pipeline) run at once. All tasks of an
//! execution share the run id `$$.Execution.Name`, so each reads its upstream outputs from the
//! run's manifest in the shared S3 store.

use serde_json::{json, Map, Value};

use crate::config::Pipeline;

/// What the state machine needs from the AWS account; placeholders by default, in the
/// `${Name}` form CloudFormation's and SAM's `DefinitionSubstitutions` fill in.
#[derive(Debug, Clone)]
pub struct EcsTarget {
    pub cluster: String,
    pub task_definition: String,
    pub container: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
}

impl Default for EcsTarget {
    fn default() -> Self {
        Self {
            cluster: "${ClusterArn}".into(),
            task_definition: "${TaskDefinitionArn}".into(),
            container: "mlpipe".into(),
            subnets: vec!["${SubnetId}".into()],
            security_groups: vec!["${SecurityGroupId}".into()],
            assign_public_ip: false,
        }
    }
}

const FAILED: &str = "Run failed";
const SUCCEEDED: &str = "Run succeeded";

/// Each stage's depth: 0 without dependencies, else one more than its deepest dependency.
pub fn levels(p: &Pipeline) -> Vec<Vec<usize>> {
    let order = p
        .dag
        .topo_order()
        .expect("a compiled pipeline has no cycle");
    let mut depth = vec![0usize; p.dag.len()];
    for &i in &order {
        depth[i] = p.dag.deps[i]
            .iter()
            .map(|&d| depth[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let max = depth.iter().copied().max().unwrap_or(0);
    (0..=max)
        .map(|l| (0..p.dag.len()).filter(|&i| depth[i] == l).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .collect()
}

/// The state machine definition for `p`, whose file the tasks read at `pipeline_file`.
pub fn step_functions(p: &Pipeline, pipeline_file: &str, t: &EcsTarget) -> Value {
    let levels = levels(p);
    let name_of = |k: usize| -> String {
        match levels[k].as_slice() {
            [one] => p.stages[*one].name.clone(),
            many => {
                let s = format!(
                    "{} in parallel",
                    many.iter()
                        .map(|&i| p.stages[i].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                // State names are limited to 80 characters.
                if s.len() <= 80 {
                    s
                } else {
                    format!("level {k}: {} stages in parallel", many.len())
                }
            }
        }
    };
    let mut states = Map::new();
    for (k, level) in levels.iter().enumerate() {
        let next = if k + 1 < levels.len() {
            name_of(k + 1)
        } else {
            SUCCEEDED.to_string()
        };
        let catch =
            json!([{ "ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": FAILED }]);
        let state = match level.as_slice() {
            [one] => {
                let mut s = task(p, *one, pipeline_file, t);
                s["Catch"] = catch;
                s["Next"] = json!(next);
                s
            }
            many => {
                let branches: Vec<Value> = many
                    .iter()
                    .map(|&i| {
                        let mut s = task(p, i, pipeline_file, t);
                        s["End"] = json!(true);
                        json!({ "StartAt": p.stages[i].name, "States": { p.stages[i].name.clone(): s } })
                    })
                    .collect();
                json!({
                    "Type": "Parallel",
                    "Comment": format!("Independent stages: {}", many.iter().map(|&i| p.stages[i].name.as_str()).collect::<Vec<_>>().join(", ")),
                    "Branches": branches,
                    "ResultPath": null,
                    "Catch": catch,
                    "Next": next,
                })
            }
        };
        states.insert(name_of(k), state);
    }
    states.insert(
        FAILED.into(),
        json!({
            "Type": "Fail",
            "Comment": "A stage failed after its retries; the run's manifest says which and why.",
            "Error": "mlpipe.StageFailed",
            "CausePath": "$.error.Cause",
        }),
    );
    states.insert(SUCCEEDED.into(), json!({ "Type": "Succeed" }));
    let placeholders = [&t.cluster, &t.task_definition]
        .into_iter()
        .chain(&t.subnets)
        .chain(&t.security_groups)
        .any(|v| v.starts_with("${"));
    json!({
        "Comment": format!(
            "mlpipe {}: pipeline `{}` ({}), one ECS task per stage, all sharing the run id $$.Execution.Name.{}",
            crate::CODE_VERSION, p.name, pipeline_file,
            if placeholders { " Replace the ${...} placeholders, or pass them as DefinitionSubstitutions." } else { "" }
        ),
        "StartAt": name_of(0),
        "States": states,
    })
}

/// The ECS `runTask.sync` state of one stage.
fn task(p: &Pipeline, i: usize, pipeline_file: &str, t: &EcsTarget) -> Value {
    let st = &p.stages[i];
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let command = format!(
        "States.Array({}, {}, {}, {}, {}, $$.Execution.Name, {}, {})",
        quote("run"),
        quote(pipeline_file),
        quote("--stage"),
        quote(&st.name),
        quote("--run-id"),
        quote("--log-format"),
        quote("json"),
    );
    // The whole of the stage's own attempts, plus time for the task to start and stop.
    let timeout = st.timeout.as_secs() * (st.retries as u64 + 1)
        + st.retry_backoff.as_secs() * (st.retries as u64)
        + 600;
    json!({
        "Type": "Task",
        "Comment": format!("{} stage{}", st.kind(), st.description.as_ref().map(|d| format!(": {d}")).unwrap_or_default()),
        "Resource": "arn:aws:states:::ecs:runTask.sync",
        "Parameters": {
            "Cluster": t.cluster,
            "TaskDefinition": t.task_definition,
            "LaunchType": "FARGATE",
            "PlatformVersion": "LATEST",
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": t.subnets,
                    "SecurityGroups": t.security_groups,
                    "AssignPublicIp": if t.assign_public_ip { "ENABLED" } else { "DISABLED" },
                }
            },
            "Overrides": {
                "ContainerOverrides": [{ "Name": t.container, "Command.$": command }]
            },
        },
        "TimeoutSeconds": timeout,
        "ResultPath": null,
        "Retry": [
            {
                // ECS API trouble (throttling, capacity): the task never ran.
                "ErrorEquals": ["ECS.AmazonECSException", "ECS.ServerException"],
                "IntervalSeconds": 10,
                "MaxAttempts": 5,
                "BackoffRate": 2.0,
                "JitterStrategy": "FULL",
            },
            {
                // The container failed (lost capacity, or a failure mlpipe's own retries did
                // not cure): once more, resuming the same run.
                "ErrorEquals": ["States.TaskFailed", "States.Timeout"],
                "IntervalSeconds": 60,
                "MaxAttempts": 1,
                "BackoffRate": 2.0,
            },
        ],
    })
}
