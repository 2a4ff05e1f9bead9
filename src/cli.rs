//! The command line (SPEC §2): clap types, and one function per subcommand that calls the
//! library and prints what people read. Errors become exit codes here and nowhere else.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Overrides, DEFAULT_PIPELINE};
use crate::engine::{self, RunOptions};
use crate::error::{Error, Result};

#[derive(Debug, Parser)]
#[command(
    name = "mlpipe",
    version,
    about = "Batch ML pipeline orchestrator: load, validate, train, measure, score, register."
)]
pub struct Cli {
    /// Log format: `pretty` (default on a terminal) or `json` (default otherwise, on stdout).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline (or part of it).
    Run(RunArgs),
    /// Show the DAG, the order, what would run and what would be reused.
    Plan(RunArgs),
    /// Print the DAG as Mermaid or Graphviz dot.
    Graph(GraphArgs),
    /// Check the pipeline file without touching data.
    Validate(PipelineArgs),
    /// Generate synthetic customer data (and truth.json).
    Generate(GenerateArgs),
    /// The model registry: list, show, promote, rollback.
    Registry(RegistryArgs),
    /// The daily model health check; exits 1 when a model is unhealthy.
    Health(PipelineArgs),
    /// Export the pipeline for another orchestrator.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub command: ExportCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// An AWS Step Functions state machine (Amazon States Language JSON) with one ECS
    /// `runTask.sync` task per stage. Placeholders `${ClusterArn}`, `${TaskDefinitionArn}`,
    /// `${SubnetId}`, `${SecurityGroupId}` stand for what is not given.
    StepFunctions(StepFunctionsArgs),
}

#[derive(Debug, Args)]
pub struct StepFunctionsArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The ECS cluster (name or ARN).
    #[arg(long)]
    pub cluster: Option<String>,
    /// The task definition (family, family:revision or ARN) whose container runs mlpipe.
    #[arg(long)]
    pub task_definition: Option<String>,
    /// The container name in the task definition.
    #[arg(long, default_value = "mlpipe")]
    pub container: String,
    /// A subnet for the tasks (repeatable).
    #[arg(long = "subnet")]
    pub subnets: Vec<String>,
    /// A security group for the tasks (repeatable).
    #[arg(long = "security-group")]
    pub security_groups: Vec<String>,
    /// Give the tasks a public IP (for subnets without a NAT gateway).
    #[arg(long)]
    pub assign_public_ip: bool,
    /// Write the definition here instead of standard output.
    #[arg(long, short)]
    pub out: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The pipeline file (for the registry root).
    #[arg(long, default_value = DEFAULT_PIPELINE, global = true)]
    pub pipeline: String,
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Every model with its production version and versions.
    List,
    /// One model's state (MODEL) or one version's document (MODEL@VERSION).
    Show { target: String },
    /// Make a version production by hand.
    Promote { model: String, version: u32 },
    /// Put back the version that was production before the current one.
    Rollback { model: String },
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file.
    #[arg(default_value = DEFAULT_PIPELINE)]
    pub pipeline: String,
    /// Override a value of the pipeline file, e.g. `--set quality.duplicates.fail=5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Read a dataset from another location for this invocation, e.g. `--input current=s3://b/c/`.
    #[arg(long = "input", value_name = "NAME=URL")]
    pub input: Vec<String>,
    /// The time freshness is measured against (RFC 3339); default: now.
    #[arg(long = "as-of", value_name = "TIMESTAMP")]
    pub as_of: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Run only this stage (repeatable); upstream outputs come from the run named by --run-id
    /// (default: the latest run).
    #[arg(long = "stage", value_name = "STAGE")]
    pub stage: Vec<String>,
    /// Run this stage and everything downstream of it.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// Run this stage and everything upstream of it.
    #[arg(long, value_name = "STAGE")]
    pub to: Option<String>,
    /// Resume or extend this run; a new id starts a new run.
    #[arg(long = "run-id", value_name = "ID")]
    pub run_id: Option<String>,
    /// Recompute selected stages even when an identical earlier result exists.
    #[arg(long)]
    pub force: bool,
    /// Serve the run's metrics in Prometheus format on this address (e.g. 127.0.0.1:9464)
    /// while the run lasts.
    #[arg(
        long = "metrics-addr",
        value_name = "ADDR",
        env = "MLPIPE_METRICS_ADDR"
    )]
    pub metrics_addr: Option<String>,
    /// Also print the metrics as CloudWatch Embedded Metric Format JSON lines at the end.
    #[arg(long)]
    pub emf: bool,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Customers per dataset.
    #[arg(long)]
    pub rows: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write `customers/`, `current/` and `truth.json` (a path or URL).
    #[arg(long)]
    pub out: String,
    /// Shift the `current` snapshot (0 none, 1 strong).
    #[arg(long, default_value_t = 0.0)]
    pub drift: f64,
    /// Inject known defects into `customers` and list them in truth.json.
    #[arg(long)]
    pub defects: bool,
    /// Snapshot time of the generated data.
    #[arg(long = "as-of", default_value = crate::generate::DEFAULT_AS_OF)]
    pub as_of: String,
    #[arg(long = "rows-per-file", default_value_t = 1_000_000)]
    pub rows_per_file: usize,
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 4;
        }
    };
    let telemetry = crate::telemetry::logs::init(json, &rt);
    let code = match rt.block_on(dispatch(cli.command, json)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                tracing::error!(kind = e.kind(), exit_code = e.exit_code(), "{e}");
            }
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    // Spans are flushed before the process exits, whatever the outcome.
    telemetry.shutdown();
    code
}

fn overrides(a: &PipelineArgs) -> Result<Overrides> {
    Ok(Overrides {
        set: Overrides::parse_pairs(&a.set, "--set")?,
        inputs: Overrides::parse_pairs(&a.input, "--input")?,
        as_of: a.as_of.clone(),
        env: true,
    })
}

fn run_options(a: &RunArgs, progress: bool) -> RunOptions {
    RunOptions {
        run_id: a.run_id.clone(),
        stages: a.stage.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        force: a.force,
        progress,
        metrics_addr: a.metrics_addr.clone(),
        emf: a.emf,
    }
}

async fn dispatch(cmd: Command, json: bool) -> Result<i32> {
    match cmd {
        Command::Run(a) => {
            let p = Arc::new(config::compile_file(
                &a.pipeline.pipeline,
                &overrides(&a.pipeline)?,
            )?);
            let progress = !json && std::io::stderr().is_terminal();
            let opts = run_options(&a, progress);
            let plan = engine::plan(&p, &opts).await?;
            let outcome = engine::execute(p.clone(), plan, &opts).await?;
            let text = crate::summary::run_summary(&p, &outcome.manifest, &p.storage.artifacts);
            if json {
                tracing::info!(summary = %text, run_id = %outcome.manifest.run_id, "run summary");
            } else {
                print!("{text}");
            }
            match outcome.error {
                None => Ok(0),
                Some(e) => Err(e),
            }
        }
        Command::Plan(a) => {
            let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
            let plan = engine::plan(&p, &run_options(&a, false)).await?;
            print!("{}", crate::summary::plan_table(&p, &plan));
            Ok(0)
        }
        Command::Graph(a) => {
            let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
            let label = |i: usize| format!("{}<br/>{}", p.stages[i].name, p.stages[i].kind.name());
            let text = match a.format {
                GraphFormat::Mermaid => p.dag.mermaid(label),
                GraphFormat::Dot => p.dag.dot(&p.name, |i| {
                    format!("{}\\n({})", p.stages[i].name, p.stages[i].kind.name())
                }),
            };
            print!("{text}");
            Ok(0)
        }
        Command::Validate(a) => {
            let p = config::compile_file(&a.pipeline, &overrides(&a)?)?;
            println!(
                "{}: pipeline `{}` is valid — {} datasets, {} stages ({})",
                p.file,
                p.name,
                p.datasets.len(),
                p.stages.len(),
                p.dag
                    .topo_order()
                    .unwrap_or_default()
                    .iter()
                    .map(|&i| p.stages[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ")
            );
            Ok(0)
        }
        Command::Health(a) => {
            let p = config::compile_file(&a.pipeline, &overrides(&a)?)?;
            let reg = crate::registry::Registry::open(&p.storage.registry)?;
            let artifacts = crate::storage::Store::open(&p.storage.artifacts)?;
            let observed = crate::health::observed_from_latest(&artifacts).await?;
            let now = p.as_of.unwrap_or_else(chrono::Utc::now);
            let report = crate::health::evaluate(&p, &reg, &observed, now).await?;
            let healthy = report.iter().all(|h| h.healthy);
            let doc = serde_json::json!({ "checked_at": now.to_rfc3339(), "healthy": healthy, "models": report });
            artifacts.put_json("health/latest.json", &doc).await?;
            for h in &report {
                let state = if h.healthy {
                    "healthy".to_string()
                } else {
                    format!("UNHEALTHY — retraining is due: {}", h.reasons.join("; "))
                };
                println!(
                    "{:<14} {:<16} {state}",
                    h.model,
                    h.production.as_deref().unwrap_or("(no production)")
                );
                for (k, c) in &h.checks {
                    println!(
                        "    {:<10} {} {}",
                        k,
                        if c.passed { "ok  " } else { "FAIL" },
                        c.detail
                    );
                }
                if !h.healthy {
                    tracing::error!(model = %h.model, reasons = %h.reasons.join("; "), "model unhealthy: retraining is due");
                }
            }
            if healthy {
                Ok(0)
            } else {
                Err(Error::CheckFailed(format!(
                    "{} of {} models unhealthy; retrain with `mlpipe run` (see {})",
                    report.iter().filter(|h| !h.healthy).count(),
                    report.len(),
                    artifacts.url_of("health/latest.json")
                )))
            }
        }
        Command::Export(ExportArgs {
            command: ExportCommand::StepFunctions(a),
        }) => {
            let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
            let mut t = crate::export::EcsTarget::default();
            if let Some(c) = a.cluster {
                t.cluster = c;
            }
            if let Some(d) = a.task_definition {
                t.task_definition = d;
            }
            t.container = a.container;
            if !a.subnets.is_empty() {
                t.subnets = a.subnets;
            }
            if !a.security_groups.is_empty() {
                t.security_groups = a.security_groups;
            }
            t.assign_public_ip = a.assign_public_ip;
            let def = crate::export::step_functions(&p, &a.pipeline.pipeline, &t);
            let mut text = serde_json::to_string_pretty(&def)?;
            text.push('\n');
            match a.out {
                None => print!("{text}"),
                Some(f) => std::fs::write(&f, text)
                    .map_err(|e| Error::Usage(format!("cannot write {f}: {e}")))?,
            }
            Ok(0)
        }
        Command::Registry(a) => {
            let p = config::compile_file(
                &a.pipeline,
                &Overrides {
                    env: true,
                    ..Default::default()
                },
            )?;
            let reg = crate::registry::Registry::open(&p.storage.registry)?;
            match a.command {
                RegistryCommand::List => {
                    println!(
                        "{:<16} {:<12} {:<10} latest",
                        "model", "production", "versions"
                    );
                    for m in reg.models().await? {
                        let st = reg.state(&m).await?;
                        let latest = st
                            .versions
                            .values()
                            .last()
                            .map(|v| format!("v{} {:?}", v.version, v.status).to_lowercase())
                            .unwrap_or_default();
                        let prod = st
                            .production
                            .map(|v| format!("v{v}"))
                            .unwrap_or_else(|| "—".into());
                        println!("{:<16} {:<12} {:<10} {latest}", m, prod, st.versions.len());
                    }
                }
                RegistryCommand::Show { target } => {
                    let (m, v) = match target.split_once('@') {
                        Some((m, v)) => (
                            m.to_string(),
                            Some(v.trim_start_matches('v').parse::<u32>().map_err(|_| {
                                Error::Usage(format!("`{v}` is not a version number"))
                            })?),
                        ),
                        None => (target.clone(), None),
                    };
                    let st = reg.state(&m).await?;
                    if st.versions.is_empty() {
                        return Err(Error::Usage(format!(
                            "no model `{m}` in the registry at {}",
                            p.storage.registry
                        )));
                    }
                    let out = match v {
                        Some(v) => serde_json::to_value(st.versions.get(&v).ok_or_else(|| {
                            Error::Usage(format!("model `{m}` has no version {v}"))
                        })?)?,
                        None => serde_json::to_value(&st)?,
                    };
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
                RegistryCommand::Promote { model, version } => {
                    let st = reg.promote(&model, version, "promoted by hand").await?;
                    println!(
                        "{model}: production is v{}",
                        st.production.unwrap_or(version)
                    );
                }
                RegistryCommand::Rollback { model } => {
                    let st = reg.rollback(&model).await?;
                    println!(
                        "{model}: rolled back; production is v{}",
                        st.production.unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Generate(a) => {
            let as_of = config::compile::parse_timestamp(&a.as_of)
                .ok_or_else(|| Error::Usage(format!("--as-of `{}` is not a timestamp", a.as_of)))?;
            let o = crate::generate::Options {
                rows: a.rows,
                seed: a.seed,
                out: a.out.clone(),
                drift: a.drift,
                defects: a.defects,
                as_of,
                rows_per_file: a.rows_per_file,
            };
            let t0 = std::time::Instant::now();
            let s = crate::generate::generate(&o).await?;
            println!(
                "wrote {} customers ({} rows with duplicates) and {} current rows to {} in {:.2} s (seed {}, drift {}, defects {})",
                a.rows,
                s.customers.rows,
                s.current.rows,
                s.out,
                t0.elapsed().as_secs_f64(),
                s.seed,
                s.drift,
                if s.defects { format!("{} rejected rows listed in truth.json", s.customers.rejected.len()) } else { "none".into() }
            );
            Ok(0)
        }
    }
}
