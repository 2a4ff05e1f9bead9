//! `mlpipe graph`: the DAG as Mermaid or Graphviz dot.

use super::{overrides, GraphArgs, GraphFormat};
use crate::config;
use crate::error::Result;

pub fn graph(a: GraphArgs) -> Result<i32> {
    let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
    let text = match a.format {
        GraphFormat::Mermaid => p
            .dag
            .mermaid(|i| format!("{}<br/>{}", p.stages[i].name, p.stages[i].kind())),
        GraphFormat::Dot => p.dag.dot(&p.name, |i| {
            format!("{}\\n({})", p.stages[i].name, p.stages[i].kind())
        }),
    };
    print!("{text}");
    Ok(0)
}
