//! The command line: the clap types here, one module per subcommand that calls the library and
//! prints what people read. `main` parses, calls, and turns the result into the exit code:
//! 0 success; 1 a gate or check failed; 2 bad usage or a bad pipeline file; 3 input data
//! unusable; 4 storage or infrastructure. Errors become exit codes here and nowhere else.

mod export;
mod generate;
mod graph;
mod health;
mod registry;
mod run;
mod validate;

use std::io::IsTerminal;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Overrides, DEFAULT_PIPELINE};
use crate::engine::RunOptions;
use crate::error::Result;

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
    /// Also write what a product database exports — `raw/profiles/`, `raw/events/` (by date)
    /// and `raw/labels/` — from which `customers` is derived with SQL (pipelines/raw.toml).
    #[arg(long)]
    pub raw: bool,
    /// Write a monthly story instead: a training snapshot, then per month the customers to
    /// score and the outcomes of last month's (README, "Watch a model degrade").
    #[arg(long)]
    pub months: Option<usize>,
    /// With --months: from this month on, the same features predict the targets differently.
    #[arg(long = "concept-change")]
    pub concept_change: Option<usize>,
    /// With --months: the covariate shift added each month.
    #[arg(long = "shift-per-month", default_value_t = 0.1)]
    pub shift_per_month: f64,
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
    // A stage cancelled by a stop signal may still be computing on a blocking thread; its
    // result is not wanted, so the runtime does not wait for it.
    rt.shutdown_background();
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
        stop: None,
    }
}

async fn dispatch(cmd: Command, json: bool) -> Result<i32> {
    match cmd {
        Command::Run(a) => run::run(a, json).await,
        Command::Plan(a) => run::plan(a).await,
        Command::Graph(a) => graph::graph(a),
        Command::Validate(a) => validate::validate(a),
        Command::Health(a) => health::health(a).await,
        Command::Export(ExportArgs {
            command: ExportCommand::StepFunctions(a),
        }) => export::step_functions(a),
        Command::Registry(a) => registry::registry(a).await,
        Command::Generate(a) => generate::generate(a).await,
    }
}
